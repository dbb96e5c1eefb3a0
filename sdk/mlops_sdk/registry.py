"""The model registry over the REST API, with the same calls as the console's in-process client
(apps/registry/client.py):

    registry = ModelRegistry(project="demo")
    version = registry.register_model(
        "model.zip",                                                   # a bundle, skops or XGBoost file
        {"metrics": {"accuracy": 0.96}, "thresholds": {"accuracy": ">=0.9"}},
        {"model_name": "iris-classifier", "label": "v1.2.0"},
    )
    model, metadata = registry.get_model("iris-classifier", version=2)   # or alias="champion"
    model.predict([{"sepal_length": 5.1, ...}])

`get_model` downloads the version, checks the bundle's sha256 against the one the registry recorded, and loads
it with the model server's own loader (serving.loader): skops with an allow-list of types, XGBoost's UBJSON,
PyTorch weights as safetensors; a pickle is refused.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from mlops_sdk.client import Client
from mlops_sdk.errors import MLOpsError, NotFound
from mlops_sdk.types import ModelVersion, PromotionRequest, RegisteredModel

STAGES = ("none", "staging", "production", "archived")
# experiment_config keys register_model sends, besides the model's name.
CONFIG_KEYS = ("label", "description", "code_version", "dataset_version")
BUNDLE_MEMBER = "model.zip"


class IntegrityError(MLOpsError):
    """The downloaded model does not hash to the sha256 the registry recorded for it."""


class ModelRegistry:
    """Registered models and their versions in one project."""

    def __init__(self, project: str | None = None, *, client: Client | None = None) -> None:
        self.client = client or Client(project=project)
        self.project = project or self.client.project

    # Reading

    def find_model(self, name: str) -> RegisteredModel:
        """The registered model of this name (case does not matter) in the project."""
        wanted = name.strip().casefold()
        params = {"project": self.client.require_project(self.project), "q": name}
        for data in self.client.paginate("/registered-models/", params):
            if data["name"].casefold() == wanted:
                return RegisteredModel.from_api(data)
        raise NotFound(404, {"detail": f"No registered model named {name!r} in project {self.project}."})

    def versions(self, name: str, *, stage: str | None = None) -> list[ModelVersion]:
        """Every version of the model, newest first."""
        model = self.find_model(name)
        return [
            ModelVersion.from_api(data)
            for data in self.client.paginate("/model-versions/", {"model": model.id, "stage": stage})
        ]

    def resolve(self, name: str | int, *, version: int | str | None = None, alias: str | None = None) -> ModelVersion:
        """A version from an id, `name` with `version=` (a number, label or stage) or `alias=`, or the
        references `name:3`, `name:v1.2.0`, `name:production`, `name@champion`."""
        if isinstance(name, int):
            return ModelVersion.from_api(self.client.get(f"/model-versions/{name}/"))
        text = str(name)
        if version is None and alias is None:
            if "@" in text:
                text, alias = text.rsplit("@", 1)
            elif ":" in text:
                text, version = text.rsplit(":", 1)
        if (version is None) == (alias is None):
            raise ValueError("give the version (version=3, 'name:3') or an alias (alias='champion', 'name@champion')")
        model = self.find_model(text)
        if alias is not None:
            number = model.aliases.get(alias)
            if number is None:
                known = ", ".join(sorted(model.aliases)) or "none"
                raise NotFound(404, {"alias": [f"{model.name} has no alias {alias!r} (its aliases: {known})."]})
            version = number
        ref = str(version)
        stage = ref if ref in STAGES else None
        for data in self.client.paginate("/model-versions/", {"model": model.id, "stage": stage}):
            if stage or (ref.isdigit() and data["number"] == int(ref)) or data["label"] == ref:
                return ModelVersion.from_api(data)
        raise NotFound(404, {"version": [f"{model.name} has no version {ref!r}."]})

    def get_model(
        self,
        name: str | int,
        version: int | str | None = None,
        *,
        alias: str | None = None,
        trust_pickle: bool = False,
    ) -> tuple[Any, dict[str, Any]]:
        """(the loaded, hash-verified model — a `serving.loader.Predictor` —, the version's metadata)."""
        resolved = self.resolve(name, version=version, alias=alias)
        with tempfile.TemporaryDirectory(prefix="mlops-model-") as folder:
            bundle, metadata = self.download(resolved, Path(folder))
            try:
                from serving.loader import load_predictor
            except ImportError as exc:
                raise MLOpsError(
                    "Loading a model needs the model libraries: pip install 'mlops-console-sdk[models]'"
                ) from exc
            predictor = load_predictor(bundle, expected_sha256=resolved.sha256, trust_pickle=trust_pickle)
        return predictor, metadata

    def download(self, version: ModelVersion, folder: Path) -> tuple[Path, dict[str, Any]]:
        """The version's bundle, written to `folder` and checked against its recorded sha256, and its metadata."""
        export = folder / "export.zip"
        with export.open("wb") as handle:
            self.client.download(f"/model-versions/{version.id}/download/", handle)
        bundle = folder / BUNDLE_MEMBER
        with zipfile.ZipFile(export) as archive:
            bundle.write_bytes(archive.read(BUNDLE_MEMBER))
            metadata = json.loads(archive.read("metadata.json"))
        digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
        if digest != version.sha256:
            raise IntegrityError(f"{version}: downloaded bundle hashes to {digest}, the registry has {version.sha256}")
        return bundle, metadata

    # Writing

    def register_model(
        self,
        model: str | Path | int,
        validation_results: dict[str, Any] | None = None,
        experiment_config: dict[str, Any] | None = None,
        *,
        signature: dict[str, Any] | None = None,
        input_example: list[dict[str, Any]] | None = None,
    ) -> ModelVersion:
        """Register the next version of the model `experiment_config` names (`model_name`, else
        `experiment_id`): from a file (a model bundle zip, a skops file, an XGBoost model; a bare model file
        needs `signature`), or from a finished run (its id).

        `validation_results` is `{"metrics": {...}, "thresholds": {"accuracy": ">=0.9"}}`; the console
        recomputes whether the thresholds pass.
        """
        config = dict(experiment_config or {})
        name = config.get("model_name") or config.get("experiment_id") or config.get("name")
        if isinstance(model, int):
            body = {
                "run": model,
                "model_name": name or "",
                **{k: config[k] for k in ("label", "description", "tags") if k in config},
            }
            return ModelVersion.from_api(self.client.post("/model-versions/", body))
        if not name:
            raise ValueError("experiment_config needs a model_name (or an experiment_id to name the model after)")
        fields: dict[str, Any] = {"project": self.client.require_project(self.project), "model_name": name}
        fields.update({key: config[key] for key in CONFIG_KEYS if key in config})
        # A multipart form carries structured values as JSON text.
        structured = {
            "validation_results": validation_results,
            "signature": signature,
            "input_example": input_example,
            "tags": config.get("tags"),
        }
        fields.update({key: json.dumps(value) for key, value in structured.items() if value is not None})
        path = Path(model)
        with path.open("rb") as handle:
            data = self.client.post("/model-versions/", data=fields, files={"file": (path.name, handle)})
        return ModelVersion.from_api(data)

    def request_promotion(
        self,
        version: ModelVersion | str | int,
        *,
        stage: str | None = None,
        alias: str | None = None,
        comment: str = "",
    ) -> PromotionRequest:
        """Ask for a stage change (`stage="production"`) or an alias move (`alias="champion"`); approvers decide."""
        if (stage is None) == (alias is None):
            raise ValueError("give either stage= or alias=")
        resolved = version if isinstance(version, ModelVersion) else self.resolve(version)
        body = {"version": resolved.id, "target_stage": stage or "", "target_alias": alias or "", "comment": comment}
        return PromotionRequest.from_api(self.client.post("/promotion-requests/", body))
