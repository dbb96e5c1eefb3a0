"""One prediction sent to a deployment's model server from the console (the page's "try it" form)."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from django.core.exceptions import ValidationError

from apps.core.exceptions import Conflict
from apps.deployments.models import Deployment
from mlops_console.logs import REQUEST_ID_HEADER, current_context

TIMEOUT_SECONDS = 10
PROTOCOLS = ("mlflow", "v2")


@dataclass(frozen=True)
class PredictionAnswer:
    """What the model server answered: its HTTP status, its body (JSON when it parses) and who answered."""

    status: int
    body: Any
    url: str
    # The registry's version number of the version that answered ("v2"), None when the server did not say.
    version: str | None

    @property
    def pretty(self) -> str:
        return json.dumps(self.body, indent=2)


def deployment_predict(*, deployment: Deployment, body: str, protocol: str) -> PredictionAnswer:
    """Send `body` (JSON) to a ready replica over `protocol` (MLflow /invocations or KServe V2 infer).

    Raises Conflict while no replica is ready, and OSError when the server does not answer.
    """
    if protocol not in PROTOCOLS:
        raise ValidationError({"protocol": f"Choose one of {', '.join(PROTOCOLS)}."})
    url = deployment.url
    if url is None:
        raise Conflict("No replica is ready to answer.")
    path = "/invocations" if protocol == "mlflow" else f"/v2/models/{deployment.name}/infer"
    parsed = urlparse(url)
    headers = {"Content-Type": "application/json"}
    # The console's request id goes on to the model server, which logs its prediction event under it: one id
    # links the console's log lines, its tasks and the prediction in telemetry.
    request_id = current_context().get("request_id")
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=TIMEOUT_SECONDS)
    try:
        connection.request("POST", path, body=body.encode(), headers=headers)
        response = connection.getresponse()
        payload = response.read()
        version_id = response.getheader("X-Model-Version")
    finally:
        connection.close()
    try:
        decoded = json.loads(payload)
    except ValueError:
        decoded = payload.decode(errors="replace")
    return PredictionAnswer(
        status=response.status, body=decoded, url=url + path, version=_label(deployment, version_id)
    )


def _label(deployment: Deployment, version_id: str | None) -> str | None:
    """Servers speak in version ids (the registry's primary keys); people read version numbers."""
    if not version_id:
        return None
    versions = deployment.registered_model.versions
    number = (
        versions.filter(pk=int(version_id)).values_list("number", flat=True).first() if version_id.isdigit() else None
    )
    return f"v{number}" if number is not None else f"version id {version_id}"
