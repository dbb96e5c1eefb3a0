from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.exceptions import DomainError
from apps.deployments import services
from apps.deployments.models import Deployment


class Command(BaseCommand):
    help = "Set a deployment's number of replicas (turns autoscaling off)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--deployment-id", type=int, required=True)
        parser.add_argument("--replicas", type=int, required=True)

    def handle(self, *args: Any, deployment_id: int, replicas: int, **options: Any) -> None:
        deployment = Deployment.objects.filter(pk=deployment_id).first()
        if deployment is None:
            raise CommandError(f"No deployment with id {deployment_id}.")
        try:
            services.deployment_scale(deployment=deployment, actor=None, replicas=replicas, autoscale=False)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        except DomainError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"Scaling {deployment.name} to {replicas} replicas."))
