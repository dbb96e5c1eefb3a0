from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from sklearn.model_selection import train_test_split

from apps.core.models import Project
from apps.core.services import normalize_name
from apps.datasets.models import DatasetVersion
from apps.registry import services
from apps.registry.choices import ModelVersionStage, PromotionRequestStatus
from apps.registry.models import PromotionRequest, RegisteredModel
from worker.datasets.demo import demo_frame
from worker.training.trainer import TrainConfig, train

MODEL_NAME = "iris-classifier"
# Two tiny models: a small forest that goes to production, and a bigger one waiting for approval.
DEMO_VERSIONS = [
    ("v1.0.0", {"n_estimators": 5, "max_depth": 2}),
    ("v1.1.0", {"n_estimators": 25}),
]
THRESHOLDS = {"accuracy": ">=0.8"}


class Command(BaseCommand):
    help = (
        "Register the demo iris model with two versions, v1 in production and a pending request to promote v2 "
        "(idempotent). Trains two tiny scikit-learn models with worker.training."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--project", default="demo", help="The project's slug (default: demo).")

    def handle(self, *args: Any, project: str, **options: Any) -> None:
        target = Project.objects.filter(slug=project).first()
        if target is None:
            raise CommandError(f"No project with slug {project!r}; run `manage.py seed_demo` first or pass --project.")
        users = get_user_model().objects
        editor = users.filter(username="alice").first()
        approver = users.filter(username="bob").first()
        admin = target.created_by or users.filter(is_superuser=True).order_by("pk").first()
        if editor is None or approver is None:
            raise CommandError("The demo users alice (editor) and bob (approver) are missing; run seed_demo first.")
        model = RegisteredModel.objects.filter(project=target, name_key=normalize_name(MODEL_NAME)).first()
        existing = {v.label: v for v in model.versions.all()} if model else {}
        # Lineage: the demo iris dataset's latest version, when load_demo_datasets loaded it.
        dataset_version = (
            DatasetVersion.objects.filter(dataset__project=target, dataset__name_key=normalize_name("iris"))
            .order_by("-number")
            .first()
        )
        frame = demo_frame("iris")
        train_df, test_df = train_test_split(frame, test_size=0.3, random_state=0, stratify=frame["target"])
        versions = []
        for label, params in DEMO_VERSIONS:
            if label in existing:
                versions.append(existing[label])
                continue
            config = TrainConfig.from_dict(
                {"algorithm": "random_forest", "target": "target", "params": params, "thresholds": THRESHOLDS}
            )
            with tempfile.TemporaryDirectory(prefix="demo-registry-") as scratch:
                result = train(config, train_df, test_df, output_dir=Path(scratch))
                versions.append(
                    services.model_version_register(
                        project=target,
                        model_name=MODEL_NAME,
                        bundle_path=result.bundle_path,
                        actor=editor,
                        label=label,
                        metrics=result.metrics,
                        params=result.params,
                        validation={"thresholds": THRESHOLDS},
                        description=f"Random forest on iris ({', '.join(f'{k}={v}' for k, v in params.items())}).",
                        tags={"demo": "true"},
                        dataset_version=dataset_version,
                    )
                )
            self.stdout.write(f"registered {versions[-1]} ({label})")
        first, second = versions
        first.refresh_from_db()
        if first.stage != ModelVersionStage.PRODUCTION and not PromotionRequest.objects.filter(version=first).exists():
            promotion = services.promotion_request_create(
                version=first, actor=editor, target_stage=ModelVersionStage.PRODUCTION, comment="First release."
            )
            services.promotion_request_approve(request=promotion, actor=approver, comment="Looks good.")
            self.stdout.write(f"{first} approved into production by {approver.username}")
        pending = PromotionRequest.objects.filter(version=second, status=PromotionRequestStatus.OPEN).exists()
        if not pending and second.stage == ModelVersionStage.NONE:
            services.promotion_request_create(
                version=second,
                actor=editor,
                target_stage=ModelVersionStage.PRODUCTION,
                comment="More trees, better accuracy on the holdout. Please review.",
            )
            self.stdout.write(f"{second}: promotion to production requested by {editor.username}, awaiting approval")
        self.stdout.write(self.style.SUCCESS(f"Demo registry ready in project {target.slug!r} (admin: {admin})."))
