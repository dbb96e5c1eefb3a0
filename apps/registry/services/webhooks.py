"""Use cases of webhooks (signed JSON or Slack): create and delete."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from apps.core.choices import ProjectRole
from apps.core.models import Project
from apps.core.notifications.channels import TRANSPORTS
from apps.core.notifications.services import deliveries_cancel
from apps.core.permissions import require_project_role
from apps.core.services import audit_record
from apps.registry.choices import RegistryEventType, WebhookKind
from apps.registry.models import Webhook


@transaction.atomic
def webhook_create(
    *,
    project: Project,
    url: str,
    actor: AbstractBaseUser,
    event_types: list[str] | None = None,
    kind: str = WebhookKind.WEBHOOK,
) -> Webhook:
    """Add a webhook or a Slack incoming webhook (owners).

    A URL whose host resolves to a loopback, link-local or private address is refused. A Slack URL is a
    secret: the audit log records it masked.
    """
    require_project_role(actor, project, ProjectRole.OWNER)
    if kind not in WebhookKind.values:
        raise ValidationError({"kind": f"Unknown kind {kind!r}; expected one of {', '.join(WebhookKind.values)}."})
    event_types = list(event_types or [])
    unknown = sorted(set(event_types) - set(RegistryEventType.values))
    if unknown:
        raise ValidationError({"event_types": f"Unknown event types: {', '.join(unknown)}."})
    TRANSPORTS[kind].check({"url": url})
    webhook = Webhook.objects.create(project=project, kind=kind, url=url, event_types=event_types, created_by=actor)
    audit_record(
        actor=actor,
        action="webhook.created",
        obj=webhook,
        project=project,
        after={"kind": kind, "url": webhook.shown_url, "events": event_types},
    )
    return webhook


@transaction.atomic
def webhook_delete(*, webhook: Webhook, actor: AbstractBaseUser) -> None:
    require_project_role(actor, webhook.project, ProjectRole.OWNER)
    audit_record(
        actor=actor, action="webhook.deleted", obj=webhook, project=webhook.project, before={"url": webhook.shown_url}
    )
    deliveries_cancel(source=webhook.source, reason="the webhook was deleted")
    webhook.delete()
