"""Uploads are streamed to a temporary file inside the artifact store while being hashed."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.files.uploadhandler import TemporaryFileUploadHandler

from apps.core.exceptions import PayloadTooLarge, ValidationError

# Below this many unpacked bytes a high compression ratio is harmless (and common in small JSON members).
UNPACKED_RATIO_FLOOR = 10 * 1024**2


def upload_too_large() -> PayloadTooLarge:
    """The request carries more than MAX_UPLOAD_BYTES."""
    return PayloadTooLarge(f"file: the upload is larger than the limit of {settings.MAX_UPLOAD_BYTES:,} bytes")


def archive_check_limits(path: Path) -> None:
    """Refuse a zip that would unpack to too much, before anything reads a member (zip bombs).

    The sizes come from the central directory. Python's zipfile (ours, skops) never yields more than a
    member's recorded size, so a forged small size cannot smuggle more bytes past this check.
    Ratios are judged only past UNPACKED_RATIO_FLOOR, below which even a bomb costs nothing.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile:
        return  # not a zip: the format check that follows names what it is
    limit = settings.MAX_UPLOAD_UNPACKED_BYTES
    if unpacked > limit:
        raise PayloadTooLarge(f"file: the archive unpacks to more than the limit of {limit:,} bytes")
    ratio = unpacked / max(path.stat().st_size, 1)
    if unpacked > UNPACKED_RATIO_FLOOR and ratio > settings.MAX_UPLOAD_COMPRESSION_RATIO:
        raise ValidationError(
            f"The archive unpacks to {ratio:,.0f} times its size (the limit is "
            f"{settings.MAX_UPLOAD_COMPRESSION_RATIO}): refused as a likely zip bomb.",
            field="file",
        )


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
