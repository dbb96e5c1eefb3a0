from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from apps.abtests.api import router as abtests_router
from apps.alerts.api import router as alerts_router
from apps.core import views as core_views
from apps.core.api import router as core_router
from apps.datasets.api import router as datasets_router
from apps.deployments.api import ArtifactFetchApi
from apps.deployments.api import router as deployments_router
from apps.experiments.api import router as experiments_router
from apps.monitoring.api import router as monitoring_router
from apps.monitoring.metrics import metrics_view
from apps.monitoring.urls import api_urlpatterns as monitoring_api_urlpatterns
from apps.registry.api import router as registry_router
from apps.telemetry.urls import api_urlpatterns as telemetry_api_urlpatterns

api_urlpatterns = [
    *core_router.urls,
    *datasets_router.urls,
    *experiments_router.urls,
    *registry_router.urls,
    *deployments_router.urls,
    *monitoring_router.urls,
    *monitoring_api_urlpatterns,
    *abtests_router.urls,
    *alerts_router.urls,
    *telemetry_api_urlpatterns,
    path("ingest/artifacts/<str:sha256>/", ArtifactFetchApi.as_view(), name="ingest-artifact"),
]

urlpatterns = [
    path("healthz", core_views.healthz, name="healthz"),
    path("readyz", core_views.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", include(api_urlpatterns)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
    path("datasets/", include("apps.datasets.urls")),
    path("deployments/", include("apps.deployments.urls")),
    path("experiments/", include("apps.experiments.urls")),
    path("monitoring/", include("apps.monitoring.urls")),
    path("abtests/", include("apps.abtests.urls")),
    path("alerts/", include("apps.alerts.urls")),
    path("", include("apps.registry.urls")),
    path("", include("apps.core.urls")),
]
