"""GET /api/v1/health/: the system health page's content as JSON (staff get the global parts)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.monitoring.health import system_health


class SystemHealthApi(APIView):
    """Celery workers, queue depths, beat, database and broker (staff; `system` is null for other users), and
    the model servers of the deployments in your projects: replicas (ready, restarts, CPU, memory), reconcile
    lag and prediction events their servers dropped. `status` is `ok` or `problem`, with `problems` listed."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        return Response(system_health(user=request.user))
