"""Use cases of webhooks: create and delete."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from apps.core.choices import ProjectRole
from apps.core.models import Project
from apps.core.permissions import require_project_role
from apps.core.services import audit_record
from apps.registry.choices import RegistryEventType
from apps.registry.models import Webhook


@transaction.atomic
def webhook_create(
    *, project: Project, url: str, actor: AbstractBaseUser, event_types: list[str] | None = None
) -> Webhook:
    """Add a webhook (owners). A URL whose host resolves to a loopback, link-local or private address is refused."""
    from apps.registry.channels.webhook import WebhookRefused, check_url

    require_project_role(actor, project, ProjectRole.OWNER)
    event_types = list(event_types or [])
    unknown = sorted(set(event_types) - set(RegistryEventType.values))
    if unknown:
        raise ValidationError({"event_types": f"Unknown event types: {', '.join(unknown)}."})
    try:
        check_url(url)
    except WebhookRefused as exc:
        raise ValidationError({"url": str(exc)}) from None
    webhook = Webhook.objects.create(project=project, url=url, event_types=event_types, created_by=actor)
    audit_record(
        actor=actor, action="webhook.created", obj=webhook, project=project, after={"url": url, "events": event_types}
    )
    return webhook


@transaction.atomic
def webhook_delete(*, webhook: Webhook, actor: AbstractBaseUser) -> None:
    require_project_role(actor, webhook.project, ProjectRole.OWNER)
    audit_record(
        actor=actor, action="webhook.deleted", obj=webhook, project=webhook.project, before={"url": webhook.url}
    )
    webhook.delete()
