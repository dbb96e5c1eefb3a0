"""Use cases of model versions: registration (bundle, run, upload), loading and export."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from apps.core.artifacts import ArtifactError, ArtifactIntegrityError, StoredArtifact, get_artifact_store, hash_file
from apps.core.choices import ProjectRole
from apps.core.models import Project
from apps.core.permissions import require_project_role
from apps.core.services import artifact_verified_path, audit_record, clean_name
from apps.core.uploads import archive_check_limits
from apps.registry.choices import ModelVersionSource, RegistryEventType
from apps.registry.events import event_emit
from apps.registry.models import LABEL_PATTERN, ModelVersion
from apps.registry.services._common import MODEL_NAME_MISSING, ModelLoadError, _model_for_update
from serving.bundle import BundleError, bundle_from_upload, detect_format, read_manifest
from serving.loader import Predictor, load_predictor
from serving.signature import check_signature, json_scalar
from worker.training.errors import ConfigError
from worker.training.evaluate import check_thresholds

# What an upload may be; everything else is refused before anything is stored.
UPLOAD_FORMATS = ("bundle", "skops", "xgboost-ubj", "xgboost-json", "pickle")
EXPORT_MEMBER_NAME = "model.zip"


def _clean_label(label: str) -> str:
    label = (label or "").strip()
    if label and not re.match(LABEL_PATTERN, label):
        raise ValidationError({"label": f"{label!r} is not a semantic version such as v1.0.0 or 1.2.3-rc.1."})
    return label


def _clean_signature(signature: Any) -> dict:
    try:
        check_signature(signature)
    except ValueError as exc:
        raise ValidationError({"signature": f"Not a valid signature: {exc}."}) from None
    return json.loads(json.dumps(signature))


def _signature_key(signature: dict) -> dict:
    """A signature in comparable form: input names, types and nullability in order, and the output."""
    outputs = dict(signature["outputs"])
    if "classes" in outputs:
        outputs["classes"] = [json_scalar(c) for c in outputs["classes"]]
    inputs = [{"name": s["name"], "type": s["type"], "nullable": bool(s.get("nullable"))} for s in signature["inputs"]]
    return {"inputs": inputs, "outputs": outputs}


def _clean_validation(validation: dict | None, metrics: dict[str, Any]) -> tuple[dict, bool | None]:
    """The validation record: thresholds, whether they passed and the failures, recomputed from the metrics."""
    validation = dict(validation or {})
    thresholds = validation.get("thresholds") or {}
    if not isinstance(thresholds, dict):
        raise ValidationError({"validation_results": "thresholds must be an object such as {'accuracy': '>=0.9'}."})
    if not thresholds:
        passed = validation.get("passed")
        return {"thresholds": {}, "passed": passed, "failures": list(validation.get("failures") or [])}, (
            bool(passed) if isinstance(passed, bool) else None
        )
    try:
        passed, failures = check_thresholds(metrics, thresholds)
    except ConfigError as exc:
        raise ValidationError({"validation_results": f"Bad threshold: {exc}"}) from None
    return {"thresholds": thresholds, "passed": passed, "failures": failures}, passed


def _json_metrics(metrics: Any) -> dict[str, float | None]:
    if not isinstance(metrics, dict):
        raise ValidationError({"metrics": "Metrics must be an object of name → number."})
    out: dict[str, float | None] = {}
    for name, value in metrics.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValidationError({"metrics": f"Metric {name!r} must be a number, not {value!r}."})
        out[str(name)] = None if value is None else float(value)
    return out


# Registration


@dataclass(frozen=True)
class InspectedBundle:
    manifest: dict
    predictor: Predictor


def _inspect_bundle(path: Path, *, field: str = "file") -> InspectedBundle:
    """Load the bundle as serving would: every member hash checked, pickle refused unless trusted."""
    try:
        manifest = read_manifest(path)
        predictor = load_predictor(path, trust_pickle=settings.REGISTRY_TRUST_PICKLE)
    except BundleError as exc:
        raise ValidationError({field: f"Not a usable model bundle: {exc}."}) from None
    return InspectedBundle(manifest=manifest, predictor=predictor)


def example_rows(signature: dict, input_example: list | None) -> list[dict[str, Any]]:
    """The input example, or one row of neutral values built from the signature when there is none."""
    if input_example:
        return list(input_example)
    neutral = {"integer": 0, "number": 0.0, "boolean": False, "datetime": "2000-01-01T00:00:00"}
    return [{spec["name"]: neutral.get(spec["type"], "") for spec in signature["inputs"]}]


def _smoke_predict(predictor: Predictor, input_example: list | None) -> None:
    """Predict one example row; a model that cannot is not what its signature says it is."""
    try:
        predictor.predict(example_rows(predictor.signature, input_example)[:1])
    except Exception as exc:  # whatever the library raises, the model does not fit the signature
        raise ValidationError(
            {"signature": f"The model cannot predict on a row shaped like the signature: {exc}"}
        ) from None


@transaction.atomic
def _create_version(
    *,
    project: Project,
    model_name: str,
    sha256: str,
    size: int,
    manifest: dict,
    actor: AbstractBaseUser | None,
    source: str,
    label: str,
    metrics: dict,
    params: dict,
    validation: dict,
    validation_passed: bool | None,
    input_example: list,
    lineage: dict[str, Any],
    code_version: str,
    tags: dict,
    description: str,
) -> ModelVersion:
    model = _model_for_update(project=project, name=model_name, actor=actor)
    if label and model.versions.filter(label=label).exists():
        raise ValidationError({"label": f"Model {model.name} already has a version labelled {label}."})
    # The model row is locked, so the next number is ours alone.
    model.last_version_number += 1
    model.save(update_fields=["last_version_number", "updated_at"])
    version = ModelVersion.objects.create(
        model=model,
        number=model.last_version_number,
        label=label,
        sha256=sha256,
        size_bytes=size,
        flavor=manifest["flavor"],
        task=manifest["task"],
        signature=manifest["signature"],
        input_example=input_example,
        metrics=metrics,
        params=params,
        validation=validation,
        validation_passed=validation_passed,
        source=source,
        code_version=code_version[:100],
        tags=tags,
        description=description.strip(),
        created_by=actor,
        **lineage,
    )
    audit_record(
        actor=actor,
        action="model_version.registered",
        obj=version,
        project=project,
        after={"number": version.number, "sha256": sha256, "source": source, "flavor": version.flavor},
    )
    event_emit(
        type=RegistryEventType.VERSION_REGISTERED,
        project=project,
        actor=actor,
        model=model,
        version=version,
        payload={"summary": f"{model.name} version {version.number} registered ({source})."},
    )
    return version


def model_version_register(
    *,
    project: Project,
    model_name: str,
    bundle_path: Path | str,
    actor: AbstractBaseUser | None,
    source: str = ModelVersionSource.UPLOAD,
    label: str = "",
    validation: dict | None = None,
    metrics: dict | None = None,
    params: dict | None = None,
    expected_signature: dict | None = None,
    input_example: list | None = None,
    dataset_version: Any = None,
    dataset_split: Any = None,
    run: Any = None,
    pipeline_run: Any = None,
    code_version: str = "",
    tags: dict | None = None,
    description: str = "",
) -> ModelVersion:
    """Register a model bundle as the next version of `model_name` (created when new) and store its artifact.

    The bundle is loaded first exactly as serving will load it, so a version that exists can be served.
    Nothing is stored when any check fails. `actor` needs the editor role; `actor=None` is the system (the
    register stage of a pipeline that no user started).
    """
    if actor is not None:
        require_project_role(actor, project, ProjectRole.EDITOR)
    clean_name(model_name, field="model_name", missing=MODEL_NAME_MISSING)
    label = _clean_label(label)
    if tags is not None and not isinstance(tags, dict):
        raise ValidationError({"tags": "Tags must be an object of name → value."})
    bundle_path = Path(bundle_path)
    inspected = _inspect_bundle(bundle_path)
    manifest = inspected.manifest
    if expected_signature is not None:
        expected = _clean_signature(expected_signature)
        if _signature_key(expected) != _signature_key(manifest["signature"]):
            raise ValidationError(
                {"signature": "The supplied signature differs from the one in the bundle's manifest (MLmodel.json)."}
            )
    example = input_example if input_example is not None else manifest.get("input_example") or []
    if input_example is not None:
        _smoke_predict(inspected.predictor, input_example)
    metrics = _json_metrics(metrics if metrics is not None else (validation or {}).get("metrics") or {})
    validation_doc, passed = _clean_validation(validation, metrics)
    if dataset_split is not None and dataset_version is None:
        dataset_version = dataset_split.version
    if dataset_split is not None and dataset_split.version_id != dataset_version.pk:
        raise ValidationError({"dataset_split": "The split belongs to another dataset version."})
    if dataset_version is not None and dataset_version.dataset.project_id != project.pk:
        raise ValidationError({"dataset_version": "The dataset version belongs to another project."})
    lineage: dict[str, Any] = {"dataset_version": dataset_version, "dataset_split": dataset_split}
    if run is not None:
        lineage["run"] = run
    if pipeline_run is not None:
        lineage["pipeline_run"] = pipeline_run

    store = get_artifact_store()
    sha256, size = hash_file(bundle_path)
    # The bytes may already be stored (a run's bundle, the same file registered twice): never delete those.
    file_existed = store.exists(sha256)
    stored = StoredArtifact(sha256=sha256, size=size) if file_existed else store.put_file(bundle_path)
    try:
        return _create_version(
            project=project,
            model_name=model_name,
            sha256=stored.sha256,
            size=stored.size,
            manifest=manifest,
            actor=actor,
            source=source,
            label=label,
            metrics=metrics,
            params=params if params is not None else dict(manifest.get("params") or {}),
            validation=validation_doc,
            validation_passed=passed,
            input_example=example,
            lineage=lineage,
            code_version=code_version,
            tags=tags or {},
            description=description,
        )
    except BaseException:
        # Nothing registered: take back the file unless another version already used the same bytes.
        if not file_existed and not ModelVersion.objects.filter(sha256=stored.sha256).exists():
            store.delete(stored.sha256)
        raise


def _run_thresholds(run: Any) -> dict[str, Any]:
    """The thresholds a run was held to, from its pipeline's config when it has one."""
    config = run.pipeline_run.config if run.pipeline_run_id else {}
    for section in (config.get("train") or {}, config.get("model_config") or {}, config):
        if isinstance(section, dict) and isinstance(section.get("thresholds"), dict):
            return section["thresholds"]
    thresholds = (run.params or {}).get("thresholds")
    return thresholds if isinstance(thresholds, dict) else {}


def model_version_register_from_run(
    *,
    run: Any,
    actor: AbstractBaseUser | None,
    model_name: str = "",
    label: str = "",
    description: str = "",
    tags: dict | None = None,
    pipeline_run: Any = None,
    source: str = ModelVersionSource.RUN,
) -> ModelVersion:
    """Register a succeeded run's model bundle, with its metrics, validation results and lineage."""
    from apps.experiments.choices import RunArtifactKind, RunStatus

    project = run.experiment.project
    if actor is not None:
        require_project_role(actor, project, ProjectRole.EDITOR)
    # Inside its pipeline the run is still running (it ends with the pipeline), its model already trained.
    allowed = (
        {RunStatus.SUCCEEDED, RunStatus.RUNNING} if source == ModelVersionSource.PIPELINE else {RunStatus.SUCCEEDED}
    )
    if run.status not in allowed:
        raise ValidationError({"run": f"Run {run.pk} is {run.status}; only a succeeded run can be registered."})
    artifact = run.artifacts.filter(kind=RunArtifactKind.MODEL).order_by("-created_at", "-pk").first()
    if artifact is None:
        raise ValidationError({"run": f"Run {run.pk} has no model bundle to register."})
    try:
        path = artifact_verified_path(sha256=artifact.sha256, project=project, obj=run, actor=actor)
    except ArtifactIntegrityError as exc:
        raise ModelLoadError(f"The model bundle of run {run.pk} failed hash verification.", integrity=True) from exc
    except ArtifactError as exc:
        raise ModelLoadError(f"The model bundle of run {run.pk} is missing from the artifact store.") from exc
    thresholds = _run_thresholds(run)
    validation = {
        "thresholds": thresholds,
        "passed": run.passes_thresholds,
        "failures": list(run.threshold_failures or []),
    }
    return model_version_register(
        project=project,
        model_name=model_name or run.experiment.name,
        bundle_path=path,
        actor=actor,
        source=source,
        label=label,
        validation=validation,
        metrics={
            name: value
            for name, value in (run.metrics or {}).items()
            if value is None or (isinstance(value, int | float) and not isinstance(value, bool))
        },
        params=dict(run.params or {}),
        dataset_version=run.dataset_version,
        dataset_split=run.dataset_split,
        run=run,
        pipeline_run=pipeline_run or run.pipeline_run,
        code_version=run.code_version,
        tags=tags if tags is not None else dict(run.tags or {}),
        description=description,
    )


def _upload_task(signature: dict) -> tuple[str, list | None]:
    outputs = signature["outputs"]
    if outputs["type"] == "classes":
        classes = outputs.get("classes") or []
        if not classes:
            raise ValidationError({"signature": "A classifier's signature must list its output classes."})
        return "classification", list(classes)
    return "regression", None


def model_version_register_upload(
    *,
    project: Project,
    model_name: str,
    path: Path | str,
    actor: AbstractBaseUser,
    signature: dict | None = None,
    input_example: list | None = None,
    label: str = "",
    validation: dict | None = None,
    code_version: str = "",
    tags: dict | None = None,
    description: str = "",
    dataset_version: Any = None,
) -> ModelVersion:
    """Register an uploaded model file: our bundle zip, a skops scikit-learn model or an XGBoost UBJSON/JSON model.

    The format is read from the file's bytes, never from its name. Pickle, joblib and cloudpickle files are
    refused before anything opens them, unless REGISTRY_TRUST_PICKLE is on. A bare model file needs the
    signature (its input columns and output); a bundle's own signature must match a supplied one.
    """
    require_project_role(actor, project, ProjectRole.EDITOR)
    path = Path(path)
    archive_check_limits(path)
    fmt = detect_format(path)
    if fmt == "pickle" and not settings.REGISTRY_TRUST_PICKLE:
        raise ValidationError(
            {
                "file": "Pickle, joblib and cloudpickle files are refused: loading them can run arbitrary code. "
                "Save scikit-learn models with skops and XGBoost models as UBJSON, or upload a model bundle."
            }
        )
    if fmt not in UPLOAD_FORMATS:
        detail = "a bare safetensors file has no architecture" if fmt == "safetensors" else "the format is unknown"
        raise ValidationError(
            {
                "file": f"Unsupported model file ({detail}). Upload a model bundle zip, a skops file or an "
                "XGBoost UBJSON/JSON model."
            }
        )
    if signature is not None:
        signature = _clean_signature(signature)
    if input_example is not None and (
        not isinstance(input_example, list) or not all(isinstance(row, dict) for row in input_example)
    ):
        raise ValidationError({"input_example": "The input example must be a list of row objects."})
    common = {
        "project": project,
        "model_name": model_name,
        "actor": actor,
        "source": ModelVersionSource.UPLOAD,
        "label": label,
        "validation": validation,
        "input_example": input_example,
        "code_version": code_version,
        "tags": tags,
        "description": description,
        "dataset_version": dataset_version,
    }
    if fmt == "bundle":
        return model_version_register(bundle_path=path, expected_signature=signature, **common)
    if signature is None:
        raise ValidationError(
            {"signature": "A bare model file needs its signature: the input columns with types and the output."}
        )
    task, classes = _upload_task(signature)
    store = get_artifact_store()
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.tmp_dir, prefix="upload-") as scratch:
        try:
            bundle = bundle_from_upload(
                path,
                fmt=fmt,
                signature=signature,
                task=task,
                classes=classes,
                trust_pickle=settings.REGISTRY_TRUST_PICKLE,
                output_path=Path(scratch) / "bundle.zip",
            )
        except BundleError as exc:
            field = "signature" if "signature" in str(exc) else "file"
            raise ValidationError({field: f"The model file was refused: {exc}."}) from None
        inspected = _inspect_bundle(bundle)
        model_classes = inspected.manifest.get("classes")
        if classes is not None and [json_scalar(c) for c in classes] != model_classes:
            raise ValidationError(
                {"signature": f"The signature's classes {classes} differ from the model's classes {model_classes}."}
            )
        _smoke_predict(inspected.predictor, input_example)
        return model_version_register(bundle_path=bundle, **{**common, "input_example": input_example or []})


# Loading and export


def model_version_load(*, version: ModelVersion, actor: AbstractBaseUser | None = None) -> Predictor:
    """The one way to load a registered model: hash-verified from the store, through serving's loader.

    A tampered artifact is refused, audited (by `artifact_verified_path`) and marked on the version, so the
    version page shows it.
    """
    project = version.model.project
    try:
        path = artifact_verified_path(sha256=version.sha256, project=project, obj=version, actor=actor)
        predictor = load_predictor(path, expected_sha256=version.sha256, trust_pickle=settings.REGISTRY_TRUST_PICKLE)
    except ArtifactIntegrityError as exc:
        _mark_integrity(version, f"The stored artifact failed hash verification: {exc}.")
        raise ModelLoadError(
            f"Integrity error: the artifact of {version} no longer matches its sha256; it was not loaded.",
            integrity=True,
        ) from exc
    except BundleError as exc:
        integrity = "hash mismatch" in str(exc)
        if integrity:
            _mark_integrity(version, f"The bundle failed verification: {exc}.")
            audit_record(
                actor=actor, action="artifact.integrity_failed", obj=version, project=project, message=str(exc)
            )
        raise ModelLoadError(f"{version} could not be loaded: {exc}", integrity=integrity) from exc
    except ArtifactError as exc:
        raise ModelLoadError(f"{version} could not be loaded: {exc}") from exc
    if version.integrity_error:
        ModelVersion.objects.filter(pk=version.pk).update(integrity_error="", integrity_checked_at=timezone.now())
        version.integrity_error = ""
    return predictor


def _mark_integrity(version: ModelVersion, message: str) -> None:
    ModelVersion.objects.filter(pk=version.pk).update(integrity_error=message, integrity_checked_at=timezone.now())
    version.integrity_error = message


def model_version_load_test(*, version: ModelVersion, actor: AbstractBaseUser | None) -> dict[str, Any]:
    """Load the version with the verified loader and predict its input example; returns rows and predictions."""
    predictor = model_version_load(version=version, actor=actor)
    rows = example_rows(version.signature, version.input_example)
    try:
        predictions = [json_scalar(value) for value in predictor.predict(rows).tolist()]
    except Exception as exc:  # the example itself may not fit a hand-uploaded model
        raise ModelLoadError(f"{version} loaded, but predicting the input example failed: {exc}") from exc
    return {"rows": rows, "predictions": predictions, "flavor": predictor.flavor, "sha256": predictor.sha256}


def model_version_metadata(version: ModelVersion) -> dict[str, Any]:
    """Everything the registry knows of a version, as JSON (export bundle, Python client)."""
    model = version.model
    return {
        "model": model.name,
        "project": model.project.slug,
        "version": version.number,
        "label": version.label,
        "sha256": version.sha256,
        "flavor": version.flavor,
        "task": version.task,
        "stage": version.stage,
        "aliases": sorted(alias.name for alias in version.aliases.all()),
        "metrics": version.metrics,
        "params": version.params,
        "validation": version.validation,
        "source": version.source,
        "lineage": {
            "run": getattr(version, "run_id", None),
            "pipeline_run": getattr(version, "pipeline_run_id", None),
            "dataset_version": version.dataset_version_id,
            "dataset_split": version.dataset_split_id,
            "code_version": version.code_version,
        },
        "tags": version.tags,
        "description": version.description,
        "created_by": version.created_by.get_username() if version.created_by else None,
        "created_at": version.created_at.isoformat(),
    }


def model_version_export(*, version: ModelVersion, actor: AbstractBaseUser | None, target: BinaryIO | Path) -> None:
    """Write a downloadable zip: the verified bundle as model.zip, signature.json and metadata.json."""
    project = version.model.project
    try:
        source = artifact_verified_path(sha256=version.sha256, project=project, obj=version, actor=actor)
    except ArtifactIntegrityError as exc:
        _mark_integrity(version, f"The stored artifact failed hash verification: {exc}.")
        raise ModelLoadError(
            f"Integrity error: the artifact of {version} failed verification.", integrity=True
        ) from exc
    except ArtifactError as exc:
        raise ModelLoadError(f"The artifact of {version} is missing from the store.") from exc
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with source.open("rb") as handle, archive.open(EXPORT_MEMBER_NAME, "w") as member:
            shutil.copyfileobj(handle, member)
        archive.writestr("signature.json", json.dumps(version.signature, indent=2, sort_keys=True))
        archive.writestr("metadata.json", json.dumps(model_version_metadata(version), indent=2, sort_keys=True))
    audit_record(actor=actor, action="model_version.exported", obj=version, project=project)
