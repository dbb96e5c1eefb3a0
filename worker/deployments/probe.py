"""Asking a running model server whether it is ready and which traffic split it serves."""

from __future__ import annotations

import http.client
import json
from typing import Any

PROBE_TIMEOUT_SECONDS = 2.0


def http_get_json(host: str, port: int, path: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> tuple[int, Any]:
    """One GET on a fresh connection; (status, decoded JSON or None). Network errors raise OSError."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(body) if body else None
    except ValueError:
        return response.status, None


def probe_server(host: str, port: int, model_name: str) -> tuple[bool, dict[str, int], str | None, str]:
    """(ready, traffic {version id: weight}, shadow version id, detail) of one model server."""
    try:
        status, _ = http_get_json(host, port, "/v2/health/ready")
        if status != 200:
            return False, {}, None, f"/v2/health/ready answered {status}"
        status, metadata = http_get_json(host, port, f"/v2/models/{model_name}")
    except (OSError, http.client.HTTPException) as exc:
        return False, {}, None, f"not answering: {exc}"
    if status != 200 or not isinstance(metadata, dict):
        return False, {}, None, f"/v2/models/{model_name} answered {status}"
    parameters = metadata.get("parameters") or {}
    traffic = {str(item["version_id"]): int(item["weight"]) for item in parameters.get("traffic") or []}
    shadow = parameters.get("shadow")
    return True, traffic, (str(shadow["version_id"]) if shadow else None), ""
