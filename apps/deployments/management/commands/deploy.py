from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from apps.core.exceptions import DomainError
from apps.core.models import Project
from apps.deployments import services
from apps.deployments.choices import (
    DeploymentBackendKind,
    DeploymentEnvironment,
    DeploymentStatus,
    DeploymentStrategy,
)
from apps.deployments.models import Deployment
from apps.registry.models import ModelVersion
from worker.deployments.spec import default_deployment_name


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


def find_deployment(project: Project, version: ModelVersion, name: str | None) -> Deployment | None:
    """The deployment to roll out on: the one named, else the model's running one in the project."""
    deployments = Deployment.objects.filter(project=project)
    if name:
        return deployments.filter(name=name).first()
    running = list(
        deployments.filter(registered_model=version.model).exclude(status=DeploymentStatus.STOPPED).order_by("name")
    )
    if len(running) > 1:
        names = ", ".join(d.name for d in running)
        raise CommandError(f"{version.model.name} runs in several deployments ({names}); choose one with --name.")
    return running[0] if running else None


class Command(BaseCommand):
    help = (
        "Deploy a registered model version: roll it out with a strategy on the model's running deployment (or the "
        "one given by --name), or create a deployment when there is none. The reconciler starts the model servers."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model-version", required=True, help="<model>:<version>, e.g. iris:2")
        parser.add_argument(
            "--strategy", choices=DeploymentStrategy.values, help="how to roll out on an existing deployment"
        )
        parser.add_argument("--traffic-percentage", type=int, help="the canary's first step (percent)")
        parser.add_argument("--replicas", type=int, help="replicas (default: 1 for a new deployment, else unchanged)")
        parser.add_argument("--backend", choices=DeploymentBackendKind.values)
        parser.add_argument("--environment", choices=DeploymentEnvironment.values, default="staging")
        parser.add_argument("--project", default="demo", help="project slug (default: demo)")
        parser.add_argument("--name", help="deployment name (default: the model's running deployment, else its name)")

    def handle(self, *args: Any, **options: Any) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"No project with slug {options['project']!r}.")
        version = parse_model_version(project, options["model_version"])
        strategy = options["strategy"] or DeploymentStrategy.BLUE_GREEN
        try:
            # One transaction: a rollout that is refused leaves no scale behind.
            with transaction.atomic():
                deployment = find_deployment(project, version, options["name"])
                if deployment is None:
                    self._create(project, version, options)
                    return
                if options["replicas"] is not None and options["replicas"] != deployment.replicas:
                    services.deployment_scale(deployment=deployment, actor=None, replicas=options["replicas"])
                services.deployment_rollout(
                    deployment=deployment,
                    model_version=version,
                    strategy=strategy,
                    actor=None,
                    traffic_percentage=options["traffic_percentage"],
                )
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        except DomainError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            self.style.SUCCESS(f"Started a {strategy} rollout of {version} on {deployment.name} (id {deployment.pk}).")
        )

    def _create(self, project: Project, version: ModelVersion, options: dict[str, Any]) -> None:
        if options["strategy"] or options["traffic_percentage"] is not None:
            raise CommandError(
                f"{version.model.name} has no running deployment to roll out on; a new deployment serves the "
                "version at 100%. Leave out --strategy and --traffic-percentage to create one, or name an "
                "existing deployment with --name."
            )
        name = options["name"] or default_deployment_name(version.model.name)
        deployment = services.deployment_create(
            project=project,
            name=name,
            actor=None,
            model_version=version,
            backend=options["backend"],
            environment=options["environment"],
            replicas=options["replicas"] or 1,
        )
        self.stdout.write(self.style.SUCCESS(f"Created deployment {deployment.name} (id {deployment.pk})."))
