from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.exceptions import DomainError
from apps.deployments import services
from apps.deployments.models import Deployment


class Command(BaseCommand):
    help = "Roll a deployment back to its desired state before the last rollout or traffic change."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--deployment-id", type=int, required=True)
        parser.add_argument("--reason", default="")

    def handle(self, *args: Any, deployment_id: int, reason: str, **options: Any) -> None:
        deployment = Deployment.objects.filter(pk=deployment_id).first()
        if deployment is None:
            raise CommandError(f"No deployment with id {deployment_id}.")
        try:
            services.deployment_rollback(deployment=deployment, actor=None, reason=reason or "manage.py rollback")
        except DomainError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"Rolled back {deployment.name}."))
