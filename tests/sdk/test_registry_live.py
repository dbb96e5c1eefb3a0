"""The SDK against a live console (a gunicorn process of its own on the test database, tests/sdk/conftest.py):
registering and loading models, errors with the API's field messages, pagination over real pages, promotion
requests, and the performance helper checked against scikit-learn."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.utils import timezone
from sklearn.metrics import accuracy_score

from apps.registry.models import ModelVersion as ModelVersionRow
from apps.registry.models import PromotionRequest as PromotionRequestRow
from apps.telemetry.models import PredictionLabel, PredictionLog, PredictionRollup
from apps.telemetry.services import labelled_predictions_record
from mlops_sdk import (
    AuthenticationError,
    Client,
    ModelDashboard,
    ModelRegistry,
    NotFound,
    ValidationError,
    check_model_performance,
    plot_accuracy_trends,
)
from tests.registry.registry_helpers import iris_frame, sklearn_bundle
from tests.sdk.conftest import sdk_client

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return sklearn_bundle(tmp_path / "iris.zip", n_estimators=5, seed=0)


def test_register_and_get_model_loads_the_verified_bundle(sdk: Client, bundle: Path, project: Any) -> None:
    registry = ModelRegistry(client=sdk)
    version = registry.register_model(
        bundle,
        {"metrics": {"accuracy": 0.96}, "thresholds": {"accuracy": ">=0.9"}},
        {"model_name": "iris-classifier", "label": "v1.0.0", "tags": {"team": "ds"}},
    )
    assert (version.model_name, version.number, version.label) == ("iris-classifier", 1, "v1.0.0")
    assert version.validation_passed is True and version.tags == {"team": "ds"}
    assert version.sha256 == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert ModelVersionRow.objects.get(pk=version.id).model.project == project

    frame, labels = iris_frame()
    for reference in [("iris-classifier", 1), ("iris-classifier:1",), ("iris-classifier:v1.0.0",)]:
        model, metadata = registry.get_model(*reference)
        assert metadata["version"] == 1 and metadata["sha256"] == version.sha256
        predicted = model.predict(frame.head(20).to_dict(orient="records"))
        assert list(predicted) == list(labels[:20]) or accuracy_score(labels[:20], predicted) > 0.8


def test_a_tampered_download_is_refused(sdk: Client, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlops_sdk import IntegrityError

    registry = ModelRegistry(client=sdk)
    registry.register_model(bundle, None, {"model_name": "iris-classifier"})
    real_download = Client.download

    def tampering(self: Client, path: str, target: Any, **kwargs: Any) -> int:
        # What an intercepting proxy could do: swap the bundle inside the export for another model.
        import io
        import zipfile

        buffer = io.BytesIO()
        real_download(self, path, buffer)
        source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
        with zipfile.ZipFile(target, "w") as out:
            for name in source.namelist():
                data = source.read(name)
                out.writestr(name, data + b"\0" if name == "model.zip" else data)
        return 0

    monkeypatch.setattr(Client, "download", tampering)
    with pytest.raises(IntegrityError, match="hashes to"):
        registry.get_model("iris-classifier", 1)


def test_errors_carry_the_field_messages(sdk: Client, bundle: Path, tmp_path: Path) -> None:
    registry = ModelRegistry(client=sdk)
    registry.register_model(bundle, None, {"model_name": "iris-classifier"})

    with pytest.raises(NotFound) as caught:
        registry.get_model("iris-classifier", 7)
    assert caught.value.fields == {"version": ["iris-classifier has no version '7'."]}
    with pytest.raises(NotFound, match="no alias 'champion'"):
        registry.get_model("iris-classifier", alias="champion")

    # A bare skops model without a signature: the console's 400 names the field.
    from sklearn.linear_model import LogisticRegression
    from skops.io import dump

    frame, labels = iris_frame()
    bare = tmp_path / "model.skops"
    dump(LogisticRegression(max_iter=500).fit(frame, labels), bare)
    with pytest.raises(ValidationError) as caught:
        registry.register_model(bare, None, {"model_name": "iris-classifier"})
    assert caught.value.status == 400 and "signature" in caught.value.fields

    # A pipeline config the console refuses: the message names the key in the config.
    from mlops_sdk import MLOpsPipeline

    with pytest.raises(ValidationError) as caught:
        MLOpsPipeline(client=sdk).start(
            {"data_config": {"dataset": "iris", "split": 1.5}, "model_config": {"algorithm": "random_forest"}}
        )
    assert list(caught.value.fields) == ["data_config.split"]
    assert "between 0 and 1" in caught.value.fields["data_config.split"][0]


def test_a_bad_token_is_an_authentication_error(live_console: Any, project: Any) -> None:
    client = Client(live_console.url, token="mlc_not-a-real-token", project=project.slug)
    with pytest.raises(AuthenticationError, match="unknown or revoked") as caught:
        client.get("/projects/")
    # The console kept the id the SDK sent and answered with it: the error quotes the id of the log lines.
    assert len(caught.value.request_id) == 32 and caught.value.request_id in str(caught.value)


def test_pagination_over_real_pages(sdk: Client, bundle: Path) -> None:
    registry = ModelRegistry(client=sdk)
    for number in range(1, 8):
        registry.register_model(bundle, None, {"model_name": "iris-classifier", "label": f"v{number}.0.0"})
    pages = sdk.get("/model-versions/", page_size=3)
    assert pages["count"] == 7 and len(pages["results"]) == 3 and pages["next"]
    versions = list(sdk.paginate("/model-versions/", page_size=3))
    assert sorted(v["number"] for v in versions) == list(range(1, 8))
    # The label search crosses the page boundary too.
    assert registry.resolve("iris-classifier:v1.0.0").number == 1
    assert [v.number for v in registry.versions("iris-classifier")] == [7, 6, 5, 4, 3, 2, 1]


def test_a_promotion_request(sdk: Client, bundle: Path) -> None:
    registry = ModelRegistry(client=sdk)
    registry.register_model(bundle, None, {"model_name": "iris-classifier"})
    promotion = registry.request_promotion("iris-classifier:1", stage="production", comment="holdout 0.96")
    row = PromotionRequestRow.objects.get(pk=promotion.id)
    assert (row.target_stage, row.status, row.comment) == ("production", "open", "holdout 0.96")
    assert promotion.status == "open" and promotion.version_number == 1
    with pytest.raises(ValidationError) as caught:
        registry.request_promotion("iris-classifier:1", alias="Not An Alias!")
    assert caught.value.fields or caught.value.detail


def test_check_model_performance_matches_scikit_learn(live_console: Any, project: Any, viewer: Any) -> None:
    """Predictions logged as a model server would, labels as feedback would store them; the SDK's accuracy is
    the one scikit-learn computes on the same rows."""
    rng = np.random.default_rng(4)
    classes = np.array(["setosa", "versicolor", "virginica"])
    predicted = rng.choice(classes, 200)
    truth = np.where(rng.random(200) < 0.8, predicted, rng.choice(classes, 200))
    created = timezone.now() - timedelta(minutes=30)
    deployment_id = 4242
    PredictionLog.objects.bulk_create(
        PredictionLog(
            deployment_id=deployment_id,
            project_id=project.pk,
            model_version_id=9,
            request_id=f"r{i}",
            status=200,
            outputs=[str(label)],
            created_at=created,
        )
        for i, label in enumerate(predicted)
    )
    PredictionRollup.objects.create(
        deployment_id=deployment_id,
        project_id=project.pk,
        model_version_id=9,
        shadow=False,
        minute=created.replace(second=0, microsecond=0),
    )
    PredictionLabel.objects.bulk_create(
        PredictionLabel(
            deployment_id=deployment_id,
            project_id=project.pk,
            request_id=f"r{i}",
            kind="label",
            truth=[str(label)],
            source="api",
            received_at=timezone.now(),
        )
        for i, label in enumerate(truth)
    )
    labelled_predictions_record({(deployment_id, f"r{i}") for i in range(len(truth))})
    client = sdk_client(live_console, viewer, project)

    check = check_model_performance(deployment_id, window="24h", accuracy_threshold=0.95, client=client)
    expected = accuracy_score(truth, predicted)
    assert check.accuracy == pytest.approx(expected, abs=1e-12)
    assert check.versions[0].labelled == 200 and check.versions[0].model_version_id == 9
    assert check.alerts == [f"version id 9: accuracy {expected:.3f} < 0.950"]
    figure = plot_accuracy_trends([check])
    assert figure.data[0].y == (pytest.approx(expected),)
    # The seed's dashboard class reads the same window itself from a deployment id.
    assert ModelDashboard(client=client).plot_accuracy_trends(deployment_id).data[0].y == (pytest.approx(expected),)

    with pytest.raises(ValidationError) as caught:
        check_model_performance(deployment_id, window="1y", client=client)
    assert list(caught.value.fields) == ["window"]
    with pytest.raises(NotFound, match="No predictions are logged for deployment 4243"):
        check_model_performance(4243, client=client)


def test_an_outsider_cannot_reach_the_projects_models(
    live_console: Any, sdk: Client, bundle: Path, outsider: Any, project: Any
) -> None:
    ModelRegistry(client=sdk).register_model(bundle, None, {"model_name": "iris-classifier"})
    other = sdk_client(live_console, outsider, project)
    with pytest.raises(ValidationError) as caught:
        ModelRegistry(client=other).get_model("iris-classifier", 1)
    assert caught.value.fields == {"project": ["No project with this slug among yours."]}
    version_id = ModelVersionRow.objects.get().pk
    with pytest.raises(NotFound):
        ModelRegistry(client=other).get_model(version_id)
