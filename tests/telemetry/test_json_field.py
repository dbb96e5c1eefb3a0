"""The log's JSON columns decode with orjson, and what orjson refuses still decodes as the json module does."""

from __future__ import annotations

import math

import pytest
from django.db import connection
from django.utils import timezone

from apps.telemetry.models import PredictionLog


@pytest.mark.django_db
def test_logged_values_read_back_as_written() -> None:
    outputs = ["é", 1, 2.5, None, True, {"nested": [1, {"deep": "x"}]}]
    PredictionLog.objects.create(
        deployment_id=1, project_id=1, request_id="r", status=200, outputs=outputs, created_at=timezone.now()
    )
    assert PredictionLog.objects.values_list("outputs", flat=True).get() == outputs
    assert PredictionLog.objects.get().outputs == outputs


def test_what_orjson_refuses_falls_back_to_the_json_module() -> None:
    field = PredictionLog._meta.get_field("outputs")
    [nan] = field.from_db_value("[NaN]", None, connection)
    assert math.isnan(nan)
    assert field.from_db_value(f"[{2**70}]", None, connection) == [2**70]
    assert field.from_db_value("not json", None, connection) == "not json", "as Django's JSONField answers"
