"""The datasets pages: list and create, detail with profile and validation, upload, rules, compare."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_POST

from apps.core.artifacts import ArtifactError, ArtifactIntegrityError
from apps.core.choices import ProjectRole
from apps.core.exceptions import PayloadTooLarge, PermissionDenied
from apps.core.filters import filter_page
from apps.core.models import Project
from apps.core.permissions import has_project_role, require_project_role
from apps.core.services import artifact_verified_path
from apps.core.views import form_errors_from
from apps.datasets import charts, selectors, services
from apps.datasets.choices import DatasetVersionStatus
from apps.datasets.filters import DatasetFilterSet
from apps.datasets.forms import DatasetCreateForm, DatasetRulesForm, DatasetVersionUploadForm
from apps.datasets.models import Dataset, DatasetVersion
from worker.datasets.schema import schema_columns

PAGE_SIZE = 25
VERSIONS_PAGE_SIZE = 10
# Beyond this many columns the page lists the schema but draws no more charts, to stay responsive.
MAX_CHARTS = 120
Handler = Callable[..., HttpResponse]


def upload_view(on_too_large: Callable[..., HttpResponse]) -> Callable[[Handler], Handler]:
    """Parse a multipart body before the CSRF check, so an oversize upload gets a 413 page instead of a 500.

    Django's CSRF middleware reads request.POST, which streams the upload through HashingUploadHandler;
    an upload over MAX_UPLOAD_BYTES raises PayloadTooLarge there, before any view could answer. So the
    middleware skips these views and the same CSRF check runs here, right after the body is parsed.
    A refused upload changes nothing, so answering it without the CSRF check is safe.
    """

    def decorator(view: Handler) -> Handler:
        protected = csrf_protect(view)

        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                request.FILES  # noqa: B018 (parses the body)
            except PayloadTooLarge as exc:
                return on_too_large(request, str(exc), *args, **kwargs)
            return protected(request, *args, **kwargs)

        return csrf_exempt(wrapper)

    return decorator


def _editable_projects(user: object) -> Any:
    projects = Project.objects.for_user(user)
    if getattr(user, "is_staff", False):
        return projects
    editor_roles = [ProjectRole.EDITOR, ProjectRole.APPROVER, ProjectRole.OWNER]
    return projects.filter(memberships__user=user, memberships__role__in=editor_roles)


def _visible_dataset(request: HttpRequest, pk: int) -> Dataset:
    return get_object_or_404(Dataset.objects.for_user(request.user).select_related("project"), pk=pk)


def _version_or_404(dataset: Dataset, number: int) -> DatasetVersion:
    return get_object_or_404(dataset.versions.select_related("job"), number=number)


# List and create


def _render_list(
    request: HttpRequest, form: DatasetCreateForm | None = None, *, status: int = 200, upload_error: str = ""
) -> HttpResponse:
    filterset = DatasetFilterSet(request.GET, selectors.dataset_list(user=request.user), request=request)
    datasets, filter_status = filter_page(filterset)
    page = Paginator(datasets, PAGE_SIZE).get_page(request.GET.get("page"))
    editable = _editable_projects(request.user)
    if form is None:
        form = DatasetCreateForm(projects=editable, initial={"project": filterset.form.cleaned_data.get("project")})
    return render(
        request,
        "datasets/dataset_list.html",
        {
            "page": page,
            "rows": [(dataset, selectors.latest_version(dataset)) for dataset in page.object_list],
            "filter": filterset,
            "form": form,
            "can_create": editable.exists(),
            "upload_error": upload_error,
        },
        status=status if status != 200 else filter_status,
    )


@login_required
@require_GET
def dataset_list(request: HttpRequest) -> HttpResponse:
    return _render_list(request)


def _create_too_large(request: HttpRequest, message: str) -> HttpResponse:
    return _render_list(request, status=413, upload_error=message)


@login_required
@require_POST
@upload_view(_create_too_large)
def dataset_create(request: HttpRequest) -> HttpResponse:
    editable = _editable_projects(request.user)
    if not editable.exists():
        raise PermissionDenied("Creating a dataset needs the editor role in a project.")
    form = DatasetCreateForm(request.POST, request.FILES, projects=editable)
    if not form.is_valid():
        return _render_list(request, form, status=400)
    data = form.cleaned_data
    upload = data.get("file")
    try:
        # One transaction: a dataset whose first file is refused is not created either.
        with transaction.atomic():
            dataset = services.dataset_create(
                project=data["project"], name=data["name"], description=data["description"], actor=request.user
            )
            version = _add_version(dataset, upload, request.user)[0] if upload else None
    except ValidationError as exc:
        form_errors_from(exc, form)
        return _render_list(request, form, status=400)
    if version is None:
        messages.success(request, f"Dataset {dataset.name} created. Upload its first version.")
        return redirect(dataset)
    messages.success(request, f"Dataset {dataset.name} created with version 1; profiling has started.")
    return redirect(version)


def _add_version(dataset: Dataset, upload: Any, actor: object) -> tuple[DatasetVersion, bool]:
    return services.dataset_version_create(
        dataset=dataset,
        path=Path(upload.temporary_file_path()),
        file_name=upload.name,
        sha256=getattr(upload, "sha256", None) or None,
        size=upload.size,
        actor=actor,
    )


# Detail


def _version_rows(version: DatasetVersion) -> list[dict[str, Any]]:
    """The schema table: one row per column with its headline statistics."""
    profiles = version.profile.get("columns", {})
    return [
        {"schema": column, "profile": profiles.get(column["name"], {})} for column in version.schema.get("columns", [])
    ]


def _render_detail(
    request: HttpRequest,
    dataset: Dataset,
    *,
    upload_form: DatasetVersionUploadForm | None = None,
    rules_form: DatasetRulesForm | None = None,
    status: int = 200,
    upload_error: str = "",
) -> HttpResponse:
    role = require_project_role(request.user, dataset.project, ProjectRole.VIEWER)
    versions = selectors.dataset_versions(dataset)
    page = Paginator(versions, VERSIONS_PAGE_SIZE).get_page(request.GET.get("page"))
    number = request.GET.get("version", "")
    selected = get_object_or_404(versions, number=int(number)) if number.isdigit() else versions.first()
    column_charts = []
    if selected is not None and selected.is_ready:
        for name, profile in list(selected.profile.get("columns", {}).items())[:MAX_CHARTS]:
            chart = charts.column_chart(name, profile)
            if chart is not None:
                column_charts.append(chart)
    return render(
        request,
        "datasets/dataset_detail.html",
        {
            "dataset": dataset,
            "project": dataset.project,
            "role": role,
            "can_edit": has_project_role(request.user, dataset.project, ProjectRole.EDITOR),
            "page": page,
            "version": selected,
            "version_count": page.paginator.count,
            "columns": _version_rows(selected) if selected else [],
            "charts": column_charts,
            "charts_truncated": selected is not None and len(selected.profile.get("columns", {})) > MAX_CHARTS,
            "max_charts": MAX_CHARTS,
            "splits": selected.splits.all()[:10] if selected else [],
            "upload_form": upload_form or DatasetVersionUploadForm(),
            "upload_error": upload_error,
            "rules_form": rules_form or DatasetRulesForm(initial={"rules": _rules_text(dataset.rules)}),
        },
        status=status,
    )


def _rules_text(rules: dict[str, Any]) -> str:
    return json.dumps(rules, indent=2, ensure_ascii=False) if rules else ""


@login_required
@require_GET
def dataset_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _render_detail(request, _visible_dataset(request, pk))


def _upload_too_large(request: HttpRequest, message: str, pk: int) -> HttpResponse:
    return _render_detail(request, _visible_dataset(request, pk), status=413, upload_error=message)


@login_required
@require_POST
@upload_view(_upload_too_large)
def dataset_upload(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = _visible_dataset(request, pk)
    form = DatasetVersionUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _render_detail(request, dataset, upload_form=form, status=400)
    try:
        version, created = _add_version(dataset, form.cleaned_data["file"], request.user)
    except ValidationError as exc:
        form_errors_from(exc, form)
        return _render_detail(request, dataset, upload_form=form, status=400)
    if created:
        messages.success(request, f"Version {version.number} uploaded; profiling has started.")
    else:
        messages.info(request, f"This file is identical to version {version.number}; no new version was made.")
    return redirect(version)


@login_required
@require_POST
def dataset_rules(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = _visible_dataset(request, pk)
    form = DatasetRulesForm(request.POST)
    if form.is_valid():
        try:
            services.dataset_update(dataset=dataset, rules=form.cleaned_data["rules"], actor=request.user)
        except ValidationError as exc:
            form_errors_from(exc, form)
        else:
            messages.success(request, "Rules saved. They apply to new versions, and to versions you re-validate.")
            return redirect(dataset)
    return _render_detail(request, dataset, rules_form=form, status=400)


@login_required
@require_GET
def version_status(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    """The job card of a version; htmx polls it while profiling and reloads the page when it is done."""
    dataset = _visible_dataset(request, pk)
    version = _version_or_404(dataset, number)
    response = render(request, "datasets/_version_status.html", {"dataset": dataset, "version": version})
    if version.is_settled and request.headers.get("HX-Request"):
        response["HX-Refresh"] = "true"
    return response


@login_required
@require_POST
def version_revalidate(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    dataset = _visible_dataset(request, pk)
    version = _version_or_404(dataset, number)
    services.dataset_version_revalidate(version=version, actor=request.user)
    messages.success(request, f"Version {version.number} is being validated again with the current rules.")
    return redirect(version)


@login_required
@require_GET
def version_download(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    dataset = _visible_dataset(request, pk)
    version = _version_or_404(dataset, number)
    try:
        path = artifact_verified_path(sha256=version.sha256, project=dataset.project, obj=version, actor=request.user)
    except ArtifactIntegrityError:
        messages.error(request, "The stored file failed hash verification, so it is withheld. This is audited.")
        return redirect(version)
    except ArtifactError:
        messages.error(request, "The stored file is missing from the artifact store.")
        return redirect(version)
    # FileResponse streams the file in chunks and closes it when the response is done.
    return FileResponse(open(path, "rb"), as_attachment=True, filename=version.file_name)


# Compare


def _schema_diff(a: DatasetVersion, b: DatasetVersion) -> list[dict[str, Any]]:
    before, after = schema_columns(a.schema), schema_columns(b.schema)
    profiles_a, profiles_b = a.profile.get("columns", {}), b.profile.get("columns", {})
    rows = []
    for name in [*after, *(n for n in before if n not in after)]:
        old, new = before.get(name), after.get(name)
        if old is None:
            change = "added"
        elif new is None:
            change = "removed"
        elif old["type"] != new["type"]:
            change = "type changed"
        else:
            change = ""
        rows.append(
            {
                "name": name,
                "a": old,
                "b": new,
                "profile_a": profiles_a.get(name, {}),
                "profile_b": profiles_b.get(name, {}),
                "change": change,
            }
        )
    return rows


@login_required
@require_GET
def version_compare(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = _visible_dataset(request, pk)
    ready = list(
        dataset.versions.filter(status=DatasetVersionStatus.READY)
        .order_by("-number")
        .only("id", "number", "dataset_id")
    )
    numbers = [version.number for version in ready]
    a_param, b_param = request.GET.get("a", ""), request.GET.get("b", "")
    b_number = int(b_param) if b_param.isdigit() else (numbers[0] if numbers else None)
    a_number = int(a_param) if a_param.isdigit() else next((n for n in numbers if n != b_number), None)
    context: dict[str, Any] = {"dataset": dataset, "project": dataset.project, "numbers": numbers}
    if a_number is not None and b_number is not None:
        a = get_object_or_404(dataset.versions, number=a_number, status=DatasetVersionStatus.READY)
        b = get_object_or_404(dataset.versions, number=b_number, status=DatasetVersionStatus.READY)
        diff = _schema_diff(a, b)
        labels = (a.label, b.label)
        overlays = [
            charts.compare_chart(row["name"], row["profile_a"], row["profile_b"], labels)
            for row in diff
            if row["a"] and row["b"]
        ][:MAX_CHARTS]
        context.update(
            {
                "a": a,
                "b": b,
                "diff": diff,
                "changed": sum(1 for row in diff if row["change"]),
                "charts": [chart for chart in overlays if chart is not None],
            }
        )
    return render(request, "datasets/version_compare.html", context)
