"""Every list filters through one strict FilterSet, shared by its HTML page and its API: a filter works the same
in both, and an unknown parameter or a malformed value is a 400 that names the parameter in both."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from apps.core import services as core_services
from apps.core.choices import ProjectRole
from apps.deployments import services as deployment_services
from apps.experiments import services as experiment_services
from apps.experiments.models import PipelineRun, Study
from apps.registry.choices import PromotionRequestStatus, RegistryEventType
from apps.registry.models import Notification, PromotionRequest, RegistryEvent, Webhook
from tests.conftest import client_for
from tests.factories import (
    DatasetFactory,
    MembershipFactory,
    ModelVersionFactory,
    ProjectFactory,
    RegisteredModelFactory,
)

pytestmark = pytest.mark.django_db

# Each list is seeded with one row the filter keeps and one it drops; the pages and the API show their names.
KEEP, DROP = "alpha-keep", "omega-drop"


@dataclass(frozen=True)
class Listing:
    name: str
    html: str | None  # the page's URL; {project} and {experiment} are filled in by the seed
    api: str | None
    malformed: str | None  # a query with a bad value for the parameter named first


LISTS = [
    Listing("projects", "/projects/", "/api/v1/projects/", None),
    Listing("audit", "/projects/{project}/audit/", "/api/v1/audit/", "project=no-such-project"),
    Listing("datasets", "/datasets/", "/api/v1/datasets/", "project=no-such-project"),
    Listing("experiments", "/experiments/", "/api/v1/experiments/", "project=no-such-project"),
    Listing("runs", "/experiments/{experiment}/", "/api/v1/runs/", "status=sleeping"),
    Listing("pipeline runs", "/experiments/pipelines/", "/api/v1/pipeline-runs/", "experiment=abc"),
    Listing("studies", "/experiments/studies/", "/api/v1/studies/", "status=sleeping"),
    Listing("registered models", "/models/", "/api/v1/registered-models/", "project=no-such-project"),
    Listing("model versions", None, "/api/v1/model-versions/", "model=1.5"),
    Listing("promotion requests", "/approvals/", "/api/v1/promotion-requests/", "inbox=maybe"),
    Listing("deployments", "/deployments/", "/api/v1/deployments/", "status=sleeping"),
    Listing("notifications", "/notifications/", "/api/v1/notifications/", "show=everything"),
    Listing("webhooks", None, "/api/v1/webhooks/", "project=no-such-project"),
    Listing("API tokens", None, "/api/v1/tokens/", None),
]


@pytest.fixture
def other(owner: Any) -> Any:
    """A second project of the owner's, so that filtering by project has something to leave out."""
    other = ProjectFactory()
    MembershipFactory(project=other, user=owner, role=ProjectRole.OWNER)
    return other


def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _experiments(owner: Any, project: Any, other: Any) -> list[Any]:
    return [
        experiment_services.experiment_create(project=p, name=name, actor=owner)
        for p, name in ((project, KEEP), (other, DROP))
    ]


def _seed_projects(owner: Any, project: Any, other: Any, **_: Any) -> tuple[str, dict]:
    for name in (KEEP, DROP):
        MembershipFactory(project=ProjectFactory(name=name), user=owner, role=ProjectRole.OWNER)
    return "q=ALPHA", {}


def _seed_audit(owner: Any, project: Any, other: Any, **_: Any) -> tuple[str, dict]:
    for action in (f"{KEEP}.done", f"{DROP}.done"):
        core_services.audit_record(actor=owner, action=action, obj=project, project=project)
    return "action=alpha", {}


def _seed_datasets(owner: Any, project: Any, other: Any, **_: Any) -> tuple[str, dict]:
    DatasetFactory(project=project, name=KEEP)
    DatasetFactory(project=other, name=DROP)
    return f"project={project.slug}", {}


def _seed_experiments(owner: Any, project: Any, other: Any, **_: Any) -> tuple[str, dict]:
    _experiments(owner, project, other)
    return f"project={project.slug}", {}


def _seed_runs(owner: Any, project: Any, other: Any, **_: Any) -> tuple[str, dict]:
    experiment = experiment_services.experiment_create(project=project, name="runs", actor=owner)
    for name in (KEEP, DROP):
        experiment_services.run_create(experiment=experiment, actor=owner, name=name)
    return "q=alpha", {"experiment": experiment.pk}


def _seed_pipeline_runs(owner: Any, project: Any, other: Any, make_dataset_version: Callable) -> tuple[str, dict]:
    for experiment in _experiments(owner, project, other):
        version = make_dataset_version(DatasetFactory(project=experiment.project), b"a\n1\n", profile=False)
        PipelineRun.objects.create(
            project=experiment.project, experiment=experiment, config={}, dataset_version=version, created_by=owner
        )
    return f"project={project.slug}", {}


def _seed_studies(owner: Any, project: Any, other: Any, **_: Any) -> tuple[str, dict]:
    for experiment in _experiments(owner, project, other):
        parent = experiment_services.run_create(experiment=experiment, actor=owner)
        Study.objects.create(
            project=experiment.project,
            experiment=experiment,
            parent_run=parent,
            storage_name=f"{experiment.name}-study",
            metric="accuracy",
            direction="maximize",
            sampler="tpe",
            pruner="none",
            n_trials=3,
        )
    return f"project={project.slug}", {}


def _seed_models(owner: Any, project: Any, other: Any, **_: Any) -> tuple[str, dict]:
    RegisteredModelFactory(project=project, name=KEEP)
    RegisteredModelFactory(project=other, name=DROP)
    return f"project={project.slug}", {}


def _seed_versions(owner: Any, project: Any, other: Any, **_: Any) -> tuple[str, dict]:
    ModelVersionFactory(model=RegisteredModelFactory(project=project, name=KEEP), stage="staging")
    ModelVersionFactory(model=RegisteredModelFactory(project=project, name=DROP))
    return "stage=staging", {}


def _seed_requests(owner: Any, project: Any, other: Any, **_: Any) -> tuple[str, dict]:
    # Decided requests only: open ones also appear in the inbox's own sections, which no filter narrows.
    for name, status in ((KEEP, PromotionRequestStatus.APPROVED), (DROP, PromotionRequestStatus.REJECTED)):
        version = ModelVersionFactory(model=RegisteredModelFactory(project=project, name=name))
        PromotionRequest.objects.create(
            model=version.model,
            version=version,
            target_stage="staging",
            transition="stage:staging",
            status=status,
            requested_by=owner,
            expires_at=timezone.now() + timedelta(days=1),
        )
    return "status=approved", {}


def _seed_deployments(owner: Any, project: Any, other: Any, **_: Any) -> tuple[str, dict]:
    for p, name in ((project, KEEP), (other, DROP)):
        version = ModelVersionFactory(model=RegisteredModelFactory(project=p, name=f"model-{name}"))
        deployment_services.deployment_create(project=p, name=name, actor=owner, model_version=version)
    return f"project={project.slug}", {}


def _seed_webhooks(owner: Any, project: Any, other: Any, **_: Any) -> tuple[str, dict]:
    for p, name in ((project, KEEP), (other, DROP)):
        # The URL is shown masked; the owner sees the HMAC secret, so it carries the marker.
        Webhook.objects.create(project=p, url=f"https://hooks.example.com/{name}", secret=name, created_by=owner)
    return f"project={project.slug}", {}


def _seed_notifications(owner: Any, project: Any, other: Any, **_: Any) -> tuple[str, dict]:
    for summary, read_at in ((KEEP, None), (DROP, timezone.now())):
        event = RegistryEvent.objects.create(
            project=project, type=RegistryEventType.VERSION_REGISTERED, payload={"summary": summary}
        )
        Notification.objects.create(user=owner, event=event, read_at=read_at)
    return "show=unread", {}


SEEDS = {
    "projects": _seed_projects,
    "audit": _seed_audit,
    "datasets": _seed_datasets,
    "experiments": _seed_experiments,
    "runs": _seed_runs,
    "pipeline runs": _seed_pipeline_runs,
    "studies": _seed_studies,
    "registered models": _seed_models,
    "model versions": _seed_versions,
    "promotion requests": _seed_requests,
    "deployments": _seed_deployments,
    "notifications": _seed_notifications,
    "webhooks": _seed_webhooks,
}


def _urls(listing: Listing, project: Any, **fill: Any) -> list[tuple[str, str]]:
    """(kind, url) for the page and the API of a list, whichever it has."""
    urls = []
    if listing.html:
        urls.append(("html", listing.html.format(project=project.slug, **fill)))
    if listing.api:
        urls.append(("api", listing.api))
    return urls


def _get(kind: str, user: Any, url: str) -> Any:
    return (browser(user) if kind == "html" else client_for(user)).get(url)


@pytest.mark.parametrize("listing", [listing for listing in LISTS if listing.name in SEEDS], ids=lambda item: item.name)
def test_a_filter_works_alike_in_the_page_and_the_api(
    listing: Listing, owner: Any, project: Any, other: Any, make_dataset_version: Callable
) -> None:
    query, fill = SEEDS[listing.name](owner, project, other, make_dataset_version=make_dataset_version)
    for kind, url in _urls(listing, project, **fill):
        unfiltered = _get(kind, owner, url)
        assert unfiltered.status_code == 200, (kind, unfiltered.content[:300])
        assert KEEP.encode() in unfiltered.content and DROP.encode() in unfiltered.content, kind
        filtered = _get(kind, owner, f"{url}?{query}")
        assert filtered.status_code == 200, (kind, filtered.content[:300])
        assert KEEP.encode() in filtered.content and DROP.encode() not in filtered.content, kind


@pytest.mark.parametrize("listing", LISTS, ids=lambda listing: listing.name)
def test_an_unknown_parameter_is_a_400_that_names_it(listing: Listing, owner: Any, project: Any) -> None:
    experiment = experiment_services.experiment_create(project=project, name="e", actor=owner)
    for kind, url in _urls(listing, project, experiment=experiment.pk):
        response = _get(kind, owner, f"{url}?page=1&colour=red")
        assert response.status_code == 400, kind
        if kind == "api":
            assert list(response.json()) == ["colour"]
            assert response.json()["colour"][0].startswith("Unknown filter 'colour': this list filters by ")
        else:
            page = response.content.decode()
            assert 'data-testid="filter-errors"' in page and "<code>colour</code>: Unknown filter" in page


@pytest.mark.parametrize("listing", [listing for listing in LISTS if listing.malformed], ids=lambda item: item.name)
def test_a_malformed_value_is_a_400_that_names_the_parameter(listing: Listing, owner: Any, project: Any) -> None:
    experiment = experiment_services.experiment_create(project=project, name="e", actor=owner)
    parameter = listing.malformed.split("=")[0]
    for kind, url in _urls(listing, project, experiment=experiment.pk):
        response = _get(kind, owner, f"{url}?{listing.malformed}")
        assert response.status_code == 400, kind
        if kind == "api":
            assert list(response.json()) == [parameter]
        else:
            assert f"<code>{parameter}</code>: " in response.content.decode()


def test_a_bad_filter_lists_nothing_and_keeps_the_form(owner: Any, project: Any) -> None:
    DatasetFactory(project=project, name=KEEP)
    page = browser(owner).get("/datasets/?project=no-such-project&q=alpha").content.decode()
    assert KEEP not in page
    assert "No project with this slug among yours." in page
    assert 'name="q" value="alpha"' in page, "the other filters keep their values"


def test_pagination_format_and_ordering_are_not_filters(owner: Any, project: Any) -> None:
    DatasetFactory(project=project, name=KEEP)
    api = client_for(owner).get("/api/v1/datasets/?page=1&page_size=10&format=json&ordering=name&search=alpha")
    assert api.status_code == 200 and api.json()["count"] == 1
    assert browser(owner).get("/datasets/?page=2&q=alpha").status_code == 200


def test_another_users_project_looks_like_no_project(project: Any, outsider: Any) -> None:
    response = client_for(outsider).get(f"/api/v1/datasets/?project={project.slug}")
    assert response.status_code == 400
    assert response.json() == {"project": ["No project with this slug among yours."]}


@pytest.mark.parametrize(
    ("value", "status", "count"), [("true", 200, 1), ("1", 200, 1), ("false", 200, 2), ("0", 200, 2), ("yes", 400, 0)]
)
def test_a_flag_reads_true_and_false_only(owner: Any, project: Any, value: str, status: int, count: int) -> None:
    experiment = experiment_services.experiment_create(project=project, name="e", actor=owner)
    parent = experiment_services.run_create(experiment=experiment, actor=owner)
    experiment_services.run_create(experiment=experiment, actor=owner, parent=parent)
    response = client_for(owner).get(f"/api/v1/runs/?top_level={value}")
    assert response.status_code == status
    if status == 200:
        assert response.json()["count"] == count
    else:
        assert response.json() == {"top_level": ["Use 1 or true, 0 or false."]}


def test_the_runs_page_reads_its_trials_box(owner: Any, project: Any) -> None:
    experiment = experiment_services.experiment_create(project=project, name="e", actor=owner)
    parent = experiment_services.run_create(experiment=experiment, actor=owner, name="parent-run")
    experiment_services.run_create(experiment=experiment, actor=owner, parent=parent, name="trial-run")
    client = browser(owner)
    assert "trial-run" not in client.get(f"/experiments/{experiment.pk}/").content.decode()
    assert "trial-run" in client.get(f"/experiments/{experiment.pk}/?trials=1").content.decode()
