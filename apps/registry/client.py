"""A Python API of the registry for code that runs inside the console (notebooks via `manage.py shell`,
management commands, tasks). It calls the same services as the UI and the REST API.

    from apps.registry.client import ModelRegistry

    registry = ModelRegistry(project="demo", actor="alice")
    version = registry.register_model(
        "var/model.zip",                                   # a bundle path, or a TrainResult
        {"metrics": {"accuracy": 0.96}, "thresholds": {"accuracy": ">=0.9"}},
        {"experiment_id": "iris", "model_name": "iris-classifier", "label": "v1.2.0"},
    )
    model, metadata = registry.get_model("iris-classifier@champion")   # or "iris-classifier:3", "…:production"
    model.predict([{"sepal_length": 5.1, ...}])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ObjectDoesNotExist

from apps.core.models import Project
from apps.core.services import normalize_name
from apps.registry import services
from apps.registry.choices import ModelVersionStage
from apps.registry.models import ModelVersion, RegisteredModel
from serving.loader import Predictor

# experiment_config keys read by register_model, besides the model's name.
CONFIG_KEYS = ("label", "description", "tags", "code_version")


class ModelRegistry:
    """The registry of one project, acting as `actor` (a user or a username; None acts as the system)."""

    def __init__(self, *, project: Project | str, actor: AbstractBaseUser | str | None = None) -> None:
        self.project = project if isinstance(project, Project) else Project.objects.get(slug=project)
        if isinstance(actor, str):
            actor = get_user_model().objects.get(username=actor)
        self.actor = actor

    def register_model(
        self,
        model_bundle_path_or_predictor_source: str | Path | Any,
        validation_results: dict[str, Any] | None = None,
        experiment_config: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Register a bundle as the next version of the model the config names.

        The source is a bundle path or anything with a `bundle_path` (worker.training's TrainResult). The
        validation results are `{"metrics": {...}, "thresholds": {...}}` (passing is recomputed). The model
        is `experiment_config["model_name"]`, else `experiment_config["experiment_id"]`.
        """
        config = dict(experiment_config or {})
        source = model_bundle_path_or_predictor_source
        path = Path(getattr(source, "bundle_path", source))
        metrics = (validation_results or {}).get("metrics")
        if metrics is None and hasattr(source, "metrics"):
            metrics = dict(source.metrics)
        name = config.get("model_name") or config.get("experiment_id") or config.get("name")
        if not name:
            raise ValueError("experiment_config needs a model_name (or an experiment_id to name the model after)")
        return services.model_version_register(
            project=self.project,
            model_name=str(name),
            bundle_path=path,
            actor=self.actor,
            validation={**(validation_results or {}), "metrics": metrics or {}},
            metrics=metrics or {},
            **{key: config[key] for key in CONFIG_KEYS if key in config},
        )

    def resolve(self, version: ModelVersion | str | int, *, model_name: str | None = None) -> ModelVersion:
        """A version from `name:3`, `name:v1.2.0`, `name:production`, `name@champion`, or a number with
        `model_name`."""
        if isinstance(version, ModelVersion):
            return version
        text = str(version)
        alias = None
        if "@" in text:
            model_name, alias = text.rsplit("@", 1)
            ref = ""
        elif ":" in text:
            model_name, ref = text.rsplit(":", 1)
        else:
            ref = text
        if not model_name:
            raise ValueError("name the model: 'model:3', 'model@champion', or pass model_name=")
        model = RegisteredModel.objects.get(project=self.project, name_key=normalize_name(model_name))
        versions = model.versions.select_related("model__project")
        try:
            if alias is not None:
                return versions.get(aliases__name=alias)
            if ref.isdigit():
                return versions.get(number=int(ref))
            if ref in ModelVersionStage.values:
                return versions.filter(stage=ref).order_by("-number")[:1].get()
            return versions.get(label=ref)
        except ObjectDoesNotExist:
            raise ModelVersion.DoesNotExist(f"{model.name} has no version {text!r}") from None

    def get_model(
        self, version: ModelVersion | str | int, *, model_name: str | None = None
    ) -> tuple[Predictor, dict[str, Any]]:
        """(the loaded, hash-verified Predictor, the version's metadata)."""
        resolved = self.resolve(version, model_name=model_name)
        predictor = services.model_version_load(version=resolved, actor=self.actor)
        return predictor, services.model_version_metadata(resolved)
