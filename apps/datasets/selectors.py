"""Queries of the datasets app, shared by the HTML pages and the API so both filter the same way."""

from __future__ import annotations

from django.db.models import Count, Prefetch, QuerySet

from apps.datasets.models import Dataset, DatasetSplit, DatasetVersion


def dataset_list(*, user: object, project: str = "") -> QuerySet[Dataset]:
    """The datasets the user may see, with version counts and the latest version, in a fixed number of queries.

    `project` is a project slug; lists filter further through `DatasetFilterSet`.
    """
    datasets = Dataset.objects.for_user(user).select_related("project", "created_by")
    if project:
        datasets = datasets.filter(project__slug=project)
    latest = DatasetVersion.objects.order_by("-number")[:1]
    return (
        datasets.annotate(version_count=Count("versions"))
        .prefetch_related(Prefetch("versions", queryset=latest, to_attr="latest_versions"))
        .order_by("project__name", "name", "pk")
    )


def dataset_versions(dataset: Dataset) -> QuerySet[DatasetVersion]:
    return dataset.versions.select_related("job", "created_by", "parent").order_by("-number")


def latest_version(dataset: Dataset) -> DatasetVersion | None:
    """The newest version, from the prefetch of `dataset_list` when there is one."""
    if hasattr(dataset, "latest_versions"):
        return dataset.latest_versions[0] if dataset.latest_versions else None
    return dataset.versions.order_by("-number").first()


def dataset_split_find(
    *, version: DatasetVersion, test_size: float, seed: int, stratify: str = ""
) -> DatasetSplit | None:
    """The split made earlier with these parameters, if any."""
    return DatasetSplit.objects.filter(
        version=version, test_size=float(test_size), seed=seed, stratify=(stratify or "").strip()
    ).first()
