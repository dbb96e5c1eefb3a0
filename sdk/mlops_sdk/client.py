"""The one HTTP client every part of the SDK shares (the pipeline, registry, deployment and monitoring helpers,
and whatever is built on top, such as an A/B test class).

    client = Client()                                  # MLOPS_URL and MLOPS_TOKEN from the environment
    client = Client("https://mlops.example.com", token="mlc_…", project="demo")
    client.get("/deployments/7/")                      # paths are relative to /api/v1/
    for version in client.paginate("/model-versions/", params={"model": 3}):
        ...

- Authentication: a personal API token (`Authorization: Bearer mlc_…`); create one on the console's
  "API tokens" page or with `POST /api/v1/tokens/`.
- Errors: a 4xx/5xx answer raises an `APIError` subclass carrying the status, `detail` and the messages
  per field (`errors.py`).
- Retries: 503 is retried for every method (the console answers 503 only for work it did not do); 502 and 504
  (a proxy that may or may not have passed the request on) and connection failures only for GET, HEAD,
  OPTIONS, PUT and DELETE. Exponential backoff from `backoff` seconds, doubling, at most `max_backoff`, or the
  server's Retry-After when it sends one (capped the same way).
- Pagination: `paginate` follows the `next` links of the console's page-number lists.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urljoin

import requests

from mlops_sdk.errors import ConfigurationError, error_for

logger = logging.getLogger("mlops_sdk.client")

API_PREFIX = "/api/v1/"
RETRY_ALWAYS = frozenset({503})
RETRY_IDEMPOTENT = frozenset({502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 0.5
DEFAULT_MAX_BACKOFF = 8.0
USER_AGENT = "mlops-console-sdk/0.1"


class Client:
    """A session with one console, as the owner of one personal API token."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        project: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        url = url or os.environ.get("MLOPS_URL", "")
        token = token or os.environ.get("MLOPS_TOKEN", "")
        if not url:
            raise ConfigurationError("No console URL: pass url= or set MLOPS_URL (e.g. https://mlops.example.com).")
        if not token:
            raise ConfigurationError("No API token: pass token= or set MLOPS_TOKEN (create one under API tokens).")
        self.url = url.rstrip("/")
        self.project = project or os.environ.get("MLOPS_PROJECT") or None
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT})

    def __repr__(self) -> str:
        return f"Client({self.url!r}, project={self.project!r})"

    @classmethod
    def default(cls, client: Client | None = None, **kwargs: Any) -> Client:
        """`client` if given, else one from the environment (what every helper does when not handed one)."""
        return client if client is not None else cls(**kwargs)

    def api_url(self, path: str) -> str:
        """`/deployments/7/` -> https://console/api/v1/deployments/7/; an absolute URL is kept (`next` links)."""
        if path.startswith(("http://", "https://")):
            return path
        return urljoin(self.url + API_PREFIX, path.lstrip("/"))

    def require_project(self, project: str | None = None) -> str:
        slug = project or self.project
        if not slug:
            raise ConfigurationError("No project: pass project= or set MLOPS_PROJECT to the project's slug.")
        return slug

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        files: Any = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """One call with the retry policy above; an error status raises an `APIError`."""
        method = method.upper()
        url = self.api_url(path)
        # One id for all attempts: the console logs each under it, and it names the call in an error report.
        headers = {"X-Request-Id": uuid.uuid4().hex, **(headers or {})}
        retryable = RETRY_IDEMPOTENT if method in IDEMPOTENT_METHODS else RETRY_ALWAYS
        attempt = 0
        while True:
            if files is not None:
                for handle in _file_handles(files):
                    handle.seek(0)
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    data=data,
                    files=files,
                    headers=headers,
                    timeout=self.timeout,
                    stream=stream,
                )
            except requests.ConnectionError:
                if method not in IDEMPOTENT_METHODS or attempt >= self.retries:
                    raise
                self._sleep(self._delay(attempt, None))
                attempt += 1
                continue
            if response.status_code in retryable and attempt < self.retries:
                delay = self._delay(attempt, response.headers.get("Retry-After"))
                logger.info("%s %s answered %s; retrying in %.1f s", method, url, response.status_code, delay)
                response.close()
                self._sleep(delay)
                attempt += 1
                continue
            if response.status_code >= 400:
                request_id = response.headers.get("X-Request-Id") or headers["X-Request-Id"]
                raise error_for(response.status_code, _body(response), method=method, url=url, request_id=request_id)
            return response

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_backoff)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        return min(self.backoff * 2**attempt, self.max_backoff)

    def get(self, path: str, **params: Any) -> Any:
        return _json(self.request("GET", path, params=_clean(params)))

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return _json(self.request("POST", path, json=json, **kwargs))

    def patch(self, path: str, json: Any = None) -> Any:
        return _json(self.request("PATCH", path, json=json))

    def delete(self, path: str) -> None:
        self.request("DELETE", path)

    def paginate(self, path: str, params: dict[str, Any] | None = None, *, page_size: int = 100) -> Iterator[Any]:
        """Every item of a list, page after page (the console's `{"count", "next", "results"}` pages)."""
        page = _json(self.request("GET", path, params={"page_size": page_size, **_clean(params or {})}))
        while True:
            if isinstance(page, list):  # an unpaginated list (e.g. a run's metric series)
                yield from page
                return
            yield from page["results"]
            if not page.get("next"):
                return
            page = _json(self.request("GET", page["next"]))

    def download(self, path: str, target: Any, *, chunk_size: int = 1 << 20) -> int:
        """Stream a binary answer into an open file; returns the number of bytes written."""
        written = 0
        with self.request("GET", path, stream=True) as response:
            for chunk in response.iter_content(chunk_size):
                target.write(chunk)
                written += len(chunk)
        return written


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}


def _body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _json(response: requests.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    return response.json()


def _file_handles(files: Any) -> list[Any]:
    """The open files of a `files=` argument, rewound before a retry resends them."""
    values = files.values() if isinstance(files, dict) else [value for _, value in files]
    handles = []
    for value in values:
        handle = value[1] if isinstance(value, tuple) else value
        if hasattr(handle, "seek"):
            handles.append(handle)
    return handles
