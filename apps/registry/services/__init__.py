"""Use cases of the registry: registration, loading and export of model versions, promotion requests and
their approval, webhooks and notifications.

Transitions lock their rows in one order (model, request, versions, alias) so that two of them never
deadlock, and two approvals racing each other give exactly one transition. Every change is audited and
emits a registry event (see events.py), which other apps and the channels receive after commit.

Views, the API, tasks and commands import from here.
"""

from __future__ import annotations

from apps.registry.services._common import ModelLoadError
from apps.registry.services.models import registered_model_create, registered_model_update
from apps.registry.services.notifications import notifications_mark_read
from apps.registry.services.promotions import (
    promotion_request_approve,
    promotion_request_create,
    promotion_request_expire,
    promotion_request_reject,
    promotion_request_withdraw,
    promotion_requests_expire_due,
)
from apps.registry.services.versions import (
    EXPORT_MEMBER_NAME,
    UPLOAD_FORMATS,
    InspectedBundle,
    example_rows,
    model_version_export,
    model_version_load,
    model_version_load_test,
    model_version_metadata,
    model_version_register,
    model_version_register_from_run,
    model_version_register_upload,
)
from apps.registry.services.webhooks import webhook_create, webhook_delete

__all__ = [
    "EXPORT_MEMBER_NAME",
    "InspectedBundle",
    "ModelLoadError",
    "UPLOAD_FORMATS",
    "example_rows",
    "model_version_export",
    "model_version_load",
    "model_version_load_test",
    "model_version_metadata",
    "model_version_register",
    "model_version_register_from_run",
    "model_version_register_upload",
    "notifications_mark_read",
    "promotion_request_approve",
    "promotion_request_create",
    "promotion_request_expire",
    "promotion_request_reject",
    "promotion_request_withdraw",
    "promotion_requests_expire_due",
    "registered_model_create",
    "registered_model_update",
    "webhook_create",
    "webhook_delete",
]
