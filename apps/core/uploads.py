"""Uploads are streamed to a temporary file inside the artifact store while being hashed."""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.files.uploadhandler import TemporaryFileUploadHandler

from apps.core.exceptions import PayloadTooLarge


def upload_too_large() -> PayloadTooLarge:
    """The request carries more than MAX_UPLOAD_BYTES."""
    return PayloadTooLarge(f"file: the upload is larger than the limit of {settings.MAX_UPLOAD_BYTES:,} bytes")


class HashedUploadedFile(TemporaryUploadedFile):
    sha256: str = ""


class HashingUploadHandler(TemporaryFileUploadHandler):
    def handle_raw_input(self, input_data: Any, META: Any, content_length: int, boundary: Any, encoding: Any = None):  # noqa: N803 (Django's signature)
        if content_length and content_length > settings.MAX_UPLOAD_BYTES + 64 * 1024:
            raise upload_too_large()
        return

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self._digest = hashlib.sha256()
        self.file = HashedUploadedFile(self.file_name, self.content_type, 0, self.charset, self.content_type_extra)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        if start + len(raw_data) > settings.MAX_UPLOAD_BYTES:
            self.file.close()
            raise upload_too_large()
        self._digest.update(raw_data)
        self.file.write(raw_data)

    def file_complete(self, file_size: int) -> HashedUploadedFile:
        self.file.seek(0)
        self.file.size = file_size
        self.file.sha256 = self._digest.hexdigest()
        return self.file
