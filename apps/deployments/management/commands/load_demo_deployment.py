from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apps.core.models import Project
from apps.deployments import services
from apps.deployments.choices import DeploymentEnvironment, DeploymentStrategy
from apps.deployments.models import Deployment
from apps.registry.choices import ModelVersionStage
from apps.registry.models import ModelVersion
from apps.registry.services import model_version_register

# The registry demo's model (its production version); without it, a model of our own.
REGISTRY_DEMO_MODEL = "iris-classifier"
MODEL_NAME = "iris"
DEPLOYMENT_NAME = "iris"
# How long to wait, by default, for a reconcile another process (a worker) is running on the deployment.
BUSY_WAIT_SECONDS = 180
BUSY_POLL_SECONDS = 0.5


def _iris_bundle(path: Path) -> Path:
    """A small random forest on iris, saved as a model bundle (used when the registry demo has no iris model)."""
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    from serving.bundle import save_bundle
    from serving.signature import infer_signature

    data = load_iris(as_frame=True)
    frame = data.frame.drop(columns="target")
    frame.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    labels = np.asarray(data.target_names)[data.target.to_numpy()]
    model = RandomForestClassifier(n_estimators=25, random_state=0).fit(frame, labels)
    classes = [str(c) for c in model.classes_]
    save_bundle(
        path,
        flavor="sklearn",
        task="classification",
        signature=infer_signature(frame, target_kind="classification", classes=classes),
        input_example=frame.head(3),
        classes=classes,
        params={"algorithm": "random_forest", "n_estimators": 25},
        pipeline=model,
    )
    return path


class Command(BaseCommand):
    help = (
        "Deploy the demo iris model on the local backend (idempotent): the registry demo's production version of "
        "iris-classifier (following approvals, blue-green) when it exists. Waits until it answers (and first for a "
        "reconcile a worker is running on it); prints the URL and an example curl. Model servers outlive the "
        "console: the reconciler adopts them on the next start (`manage.py stop_model_servers` stops them)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--wait-seconds",
            type=int,
            default=BUSY_WAIT_SECONDS,
            help="How long to wait for a reconcile that a worker is running on the deployment to finish "
            f"(default {BUSY_WAIT_SECONDS}).",
        )

    def _reconcile(self, deployment: Deployment, wait_seconds: int) -> str:
        """Reconcile here; while another reconciler (a worker) holds the deployment, wait for it to finish first."""
        deadline = time.monotonic() + wait_seconds
        while (outcome := services.deployment_reconcile(deployment_id=deployment.pk)) == "busy":
            if time.monotonic() >= deadline:
                raise CommandError(
                    f"A worker is still reconciling deployment {deployment.name} after {wait_seconds} s; "
                    "run the command again later, or give --wait-seconds."
                )
            time.sleep(BUSY_POLL_SECONDS)
        return outcome

    def _create(self, project: Project, admin: Any) -> Deployment:
        production = ModelVersion.objects.filter(
            model__project=project, model__name=REGISTRY_DEMO_MODEL, stage=ModelVersionStage.PRODUCTION
        ).first()
        if production is not None:
            # Approving the registry demo's pending request rolls the new version out here, blue-green.
            return services.deployment_create(
                project=project,
                name=DEPLOYMENT_NAME,
                actor=admin,
                model_version=production,
                backend="local",
                environment=DeploymentEnvironment.PRODUCTION,
                auto_deploy_on_approval=True,
                strategy=DeploymentStrategy.BLUE_GREEN,
            )
        version = (
            ModelVersion.objects.filter(model__project=project, model__name=MODEL_NAME).order_by("-number").first()
        )
        if version is None:
            with tempfile.TemporaryDirectory() as folder:
                version = model_version_register(
                    project=project,
                    model_name=MODEL_NAME,
                    bundle_path=_iris_bundle(Path(folder) / "iris.zip"),
                    actor=admin,
                    description="A random forest on the iris data set (demo).",
                )
            self.stdout.write(f"Registered {version}.")
        return services.deployment_create(
            project=project, name=DEPLOYMENT_NAME, actor=admin, model_version=version, backend="local"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        project = Project.objects.filter(slug="demo").first()
        if project is None:
            raise CommandError("Run `manage.py seed_demo` first (there is no demo project).")
        admin = get_user_model().objects.filter(is_superuser=True).order_by("pk").first()
        deployment = Deployment.objects.filter(name=DEPLOYMENT_NAME).first()
        if deployment is None:
            deployment = self._create(project, admin)
        outcome = self._reconcile(deployment, options["wait_seconds"])
        deployment.refresh_from_db()
        url = deployment.url
        if url is None:
            raise CommandError(f"The demo deployment is not ready ({outcome}): {deployment.status_message}")
        version = deployment.targets.select_related("model_version").order_by("-weight").first().model_version
        example = json.dumps({"dataframe_records": (version.input_example or [])[:1]})
        self.stdout.write(self.style.SUCCESS(f"Deployment {deployment.name} serves {version} at {url}"))
        self.stdout.write(f"  curl -s -X POST {url}/invocations -H 'Content-Type: application/json' -d '{example}'")
        self.stdout.write(f"  KServe V2: POST {url}/v2/models/{deployment.name}/infer · metrics: {url}/metrics")
