from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.models import Project
from apps.deployments import services
from apps.deployments.choices import DeploymentBackendKind, DeploymentEnvironment, DeploymentStrategy
from apps.deployments.models import Deployment
from apps.registry.models import ModelVersion


def parse_model_version(project: Project, text: str) -> ModelVersion:
    name, _, number = text.rpartition(":")
    if not name or not number.lstrip("v").isdigit():
        raise CommandError(f"--model-version must look like <model>:<version>, e.g. iris:2 (got {text!r})")
    version = (
        ModelVersion.objects.filter(model__project=project, model__name=name, number=int(number.lstrip("v")))
        .select_related("model")
        .first()
    )
    if version is None:
        raise CommandError(f"Project {project.slug} has no model {name!r} with version {number}.")
    return version


class Command(BaseCommand):
    help = (
        "Deploy a registered model version: create the deployment (named after the model unless --name), or roll "
        "the version out on it with a strategy. The reconciler starts the model servers."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model-version", required=True, help="<model>:<version>, e.g. iris:2")
        parser.add_argument("--strategy", choices=DeploymentStrategy.values, default=DeploymentStrategy.BLUE_GREEN)
        parser.add_argument("--traffic-percentage", type=int, help="the canary's first step (percent)")
        parser.add_argument("--replicas", type=int, default=1)
        parser.add_argument("--backend", choices=DeploymentBackendKind.values)
        parser.add_argument("--environment", choices=DeploymentEnvironment.values, default="staging")
        parser.add_argument("--project", default="demo", help="project slug (default: demo)")
        parser.add_argument("--name", help="deployment name (default: the model's name)")

    def handle(self, *args: Any, **options: Any) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"No project with slug {options['project']!r}.")
        version = parse_model_version(project, options["model_version"])
        name = options["name"] or version.model.name.lower().replace("_", "-")[:40]
        try:
            deployment = Deployment.objects.filter(name=name).first()
            if deployment is None:
                deployment = services.deployment_create(
                    project=project,
                    name=name,
                    actor=None,
                    model_version=version,
                    backend=options["backend"],
                    environment=options["environment"],
                    replicas=options["replicas"],
                )
                self.stdout.write(self.style.SUCCESS(f"Created deployment {deployment.name} (id {deployment.pk})."))
                return
            if options["replicas"] != deployment.replicas:
                services.deployment_scale(deployment=deployment, actor=None, replicas=options["replicas"])
            services.deployment_rollout(
                deployment=deployment,
                model_version=version,
                strategy=options["strategy"],
                actor=None,
                traffic_percentage=options["traffic_percentage"],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        except (services.DeploymentConflict, services.DeploymentGateError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            self.style.SUCCESS(f"Started a {options['strategy']} rollout of {version} on {name} (id {deployment.pk}).")
        )
