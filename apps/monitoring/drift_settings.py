"""A deployment's drift settings: per-column test and threshold overrides, the dataset drift share, and whether
the model's outputs (prediction, class probabilities) are tested. Checked here against the engine's own rules
(worker.monitoring.drift.ColumnTest) and the live version's columns, so a bad value is a 400 naming its field
when it is set, never a failed report later."""

from __future__ import annotations

import math
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from apps.core.choices import ProjectRole
from apps.core.exceptions import ValidationError
from apps.core.permissions import require_project_role
from apps.core.services import audit_record
from apps.deployments.models import Deployment
from apps.monitoring.models import DriftSettings
from apps.registry.models import ModelVersion
from worker.monitoring.drift import CATEGORICAL, NUMERIC, NUMERIC_ONLY_TESTS, P_VALUE_TESTS, TESTS, ColumnTest

PREDICTION = "prediction"
PROBA_PREFIX = "proba:"
MAX_OVERRIDES = 500


def output_kinds(version: ModelVersion) -> dict[str, str]:
    """The model's outputs as drift columns: `prediction` (categorical for a classifier, numeric for a
    regressor) and one numeric `proba:<class>` per class of a classifier, in the signature's class order."""
    outputs = (version.signature or {}).get("outputs") or {}
    if outputs.get("type") == "classes":
        classes = outputs.get("classes") or []
        return {PREDICTION: CATEGORICAL, **{f"{PROBA_PREFIX}{label}": NUMERIC for label in classes}}
    if outputs.get("type") == "value":
        return {PREDICTION: NUMERIC}
    return {}


def is_output_column(name: str) -> bool:
    return name == PREDICTION or name.startswith(PROBA_PREFIX)


def drift_settings_of(deployment: Deployment) -> DriftSettings:
    """The deployment's settings, or the defaults (unsaved) when none were set."""
    return DriftSettings.objects.filter(deployment=deployment).first() or DriftSettings(deployment=deployment)


def _threshold(value: Any, test: str | None, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValidationError("A threshold is a finite number ≥ 0 (or null for the test's default).", field=field)
    if test in P_VALUE_TESTS and not 0 < value <= 1:
        raise ValidationError(f"The {test} test's threshold is a p-value in (0, 1].", field=field)
    return float(value)


def clean_column_overrides(columns: Any, kinds: dict[str, str]) -> dict[str, dict[str, Any]]:
    """`columns` checked against the engine's tests and the columns in `kinds` (name -> numeric/categorical)."""
    if not isinstance(columns, dict):
        raise ValidationError("columns maps a column name to {test, threshold}.", field="columns")
    if len(columns) > MAX_OVERRIDES:
        raise ValidationError(f"At most {MAX_OVERRIDES} column overrides.", field="columns")
    cleaned: dict[str, dict[str, Any]] = {}
    for name, override in columns.items():
        field = f"columns.{name}"
        if name not in kinds:
            raise ValidationError(
                f"{name!r} is not a column of the model: one of {', '.join(sorted(kinds))}.", field=field
            )
        if not isinstance(override, dict) or set(override) - {"test", "threshold"}:
            raise ValidationError("An override is {test, threshold}; either may be null.", field=field)
        test = override.get("test")
        if test is not None and test not in TESTS:
            raise ValidationError(f"test must be one of {', '.join(TESTS)} (or null).", field=f"{field}.test")
        if test in NUMERIC_ONLY_TESTS and kinds[name] != NUMERIC:
            raise ValidationError(
                f"The {test} test needs a numeric column; {name} is categorical.", field=f"{field}.test"
            )
        threshold = _threshold(override.get("threshold"), test, f"{field}.threshold")
        ColumnTest(test=test, threshold=threshold)
        if test is not None or threshold is not None:
            cleaned[name] = {"test": test, "threshold": threshold}
    return cleaned


@transaction.atomic
def drift_settings_update(
    *,
    deployment: Deployment,
    actor: AbstractBaseUser,
    version: ModelVersion,
    columns: Any = None,
    drift_share: Any = None,
    prediction_drift: Any = None,
) -> DriftSettings:
    """Set what is given (None leaves a value as it is). Editors. Column names are checked against `version`
    (the deployment's main live version): its input columns and its outputs."""
    # Imported here: the services module imports this one (for the settings a report runs with).
    from apps.monitoring.services import feature_kinds

    require_project_role(actor, deployment.project, ProjectRole.EDITOR)
    current = DriftSettings.objects.select_for_update().filter(deployment=deployment).first()
    settings_row = current or DriftSettings(deployment=deployment)
    before = {"columns": settings_row.columns, "drift_share": settings_row.drift_share}
    before["prediction_drift"] = settings_row.prediction_drift
    if columns is not None:
        settings_row.columns = clean_column_overrides(columns, {**feature_kinds(version), **output_kinds(version)})
    if drift_share is not None:
        if isinstance(drift_share, bool) or not isinstance(drift_share, int | float) or not 0 < drift_share <= 1:
            raise ValidationError("drift_share is a number in (0, 1].", field="drift_share")
        settings_row.drift_share = float(drift_share)
    if prediction_drift is not None:
        if not isinstance(prediction_drift, bool):
            raise ValidationError("prediction_drift is true or false.", field="prediction_drift")
        settings_row.prediction_drift = prediction_drift
    settings_row.updated_by = actor
    settings_row.save()
    after = {
        "columns": settings_row.columns,
        "drift_share": settings_row.drift_share,
        "prediction_drift": settings_row.prediction_drift,
    }
    if after != before:
        audit_record(
            actor=actor,
            action="monitoring.drift_settings_update",
            obj=deployment,
            project=deployment.project,
            before=before,
            after=after,
        )
    return settings_row
