from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.deployments import services
from apps.deployments.models import Deployment


class Command(BaseCommand):
    help = "Write a deployment's Kubernetes manifests (multi-document YAML, no Secret) to stdout, for GitOps."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--deployment-id", type=int, required=True)

    def handle(self, *args: Any, deployment_id: int, **options: Any) -> None:
        deployment = Deployment.objects.filter(pk=deployment_id).first()
        if deployment is None:
            raise CommandError(f"No deployment with id {deployment_id}.")
        self.stdout.write(services.deployment_manifests(deployment), ending="")
