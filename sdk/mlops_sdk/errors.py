"""The errors the SDK raises. An `APIError` carries the console's answer: its status, its `detail`, and the
messages per field (`{"data_config.split": ["is the training fraction…"]}`) that the console sends on a 400."""

from __future__ import annotations

from typing import Any


class MLOpsError(Exception):
    """Anything the SDK raises on purpose."""


class ConfigurationError(MLOpsError):
    """The SDK cannot talk to a console: no URL or no token."""


class APIError(MLOpsError):
    """The console answered with an error status."""

    def __init__(self, status: int, body: Any, *, method: str = "", url: str = "", request_id: str = "") -> None:
        self.status = status
        self.body = body
        self.method = method
        self.url = url
        # The id the console logged the call under: quote it when asking an operator to look.
        self.request_id = request_id
        self.detail, self.fields = _split(body)
        super().__init__(self._message())

    def _message(self) -> str:
        parts = [f"{self.method} {self.url} answered {self.status}".strip()]
        if self.detail:
            parts.append(self.detail)
        parts += [f"{field}: {' '.join(messages)}" for field, messages in self.fields.items()]
        if self.request_id:
            parts.append(f"request id {self.request_id}")
        return "; ".join(parts)


class ValidationError(APIError):
    """400: the request was refused; `fields` names what to change."""


class AuthenticationError(APIError):
    """401: no token, or an unknown, revoked or malformed one."""


class PermissionDenied(APIError):
    """403: your role in the project does not allow this."""


class NotFound(APIError):
    """404: no such object among your projects."""


class Conflict(APIError):
    """409: the object changed meanwhile (a stale generation) or is in a state that forbids this."""


class ServerError(APIError):
    """5xx, after the retries for 502/503/504 ran out."""


class PipelineFailed(MLOpsError):
    """A pipeline run ended failed or cancelled; `pipeline_run` holds it, with its stages and errors."""

    def __init__(self, pipeline_run: Any) -> None:
        self.pipeline_run = pipeline_run
        failed = [stage for stage in pipeline_run.stages if stage.status == "failed"]
        where = f" at stage {failed[0].name}: {failed[0].error}" if failed else ""
        super().__init__(f"pipeline run {pipeline_run.id} {pipeline_run.status}{where}{_error(pipeline_run)}")


class Timeout(MLOpsError):
    """Waiting for something on the console took longer than allowed."""


def _error(pipeline_run: Any) -> str:
    return f" ({pipeline_run.error})" if getattr(pipeline_run, "error", "") else ""


STATUS_ERRORS: dict[int, type[APIError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
}


def error_for(status: int, body: Any, *, method: str = "", url: str = "", request_id: str = "") -> APIError:
    kind = STATUS_ERRORS.get(status) or (ServerError if status >= 500 else APIError)
    return kind(status, body, method=method, url=url, request_id=request_id)


def _split(body: Any) -> tuple[str, dict[str, list[str]]]:
    """The console's error bodies: `{"detail": "…"}` or `{field: [messages]}` (DRF's shape), maybe nested."""
    if isinstance(body, dict):
        detail = str(body.get("detail", "")) if "detail" in body else ""
        fields: dict[str, list[str]] = {}
        for key, value in body.items():
            if key != "detail":
                _flatten(str(key), value, fields)
        return detail, fields
    if isinstance(body, list):
        return " ".join(str(item) for item in body), {}
    return (str(body)[:500] if body else ""), {}


def _flatten(prefix: str, value: Any, out: dict[str, list[str]]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}", inner, out)
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
        for index, inner in enumerate(value):
            if inner:
                _flatten(f"{prefix}[{index}]", inner, out)
    elif isinstance(value, list):
        out.setdefault(prefix, []).extend(str(item) for item in value)
    else:
        out.setdefault(prefix, []).append(str(value))
