"""The registry pages: models, model and version detail (lineage, load test), compare, the approvals inbox,
promotion requests with their decisions, notifications, and webhook/Slack subscriptions with their deliveries.
Thin: every change goes through a service."""

from __future__ import annotations

import tempfile
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from apps.core.choices import ProjectRole
from apps.core.exceptions import PayloadTooLarge
from apps.core.filters import filter_page
from apps.core.models import Project
from apps.core.notifications.models import Delivery
from apps.core.permissions import has_project_role, project_role
from apps.core.views import form_errors_from
from apps.datasets.views import upload_view
from apps.registry import charts, selectors, services
from apps.registry.choices import GateCheckStatus, PromotionRequestStatus
from apps.registry.filters import (
    NotificationFilterSet,
    PromotionRequestFilterSet,
    RegisteredModelFilterSet,
    WebhookFilterSet,
)
from apps.registry.forms import DecisionForm, ModelUploadForm, PromotionRequestForm, WebhookForm
from apps.registry.models import ModelVersion, Notification, PromotionRequest, RegisteredModel, Webhook

PAGE_SIZE = 25
VERSIONS_PAGE_SIZE = 20


def _editable_projects(user: object) -> Any:
    projects = Project.objects.for_user(user)
    if getattr(user, "is_staff", False):
        return projects
    return projects.filter(memberships__user=user, memberships__role__in=selectors.EDITOR_ROLES)


def _visible_model(request: HttpRequest, pk: int) -> RegisteredModel:
    return get_object_or_404(RegisteredModel.objects.for_user(request.user).select_related("project"), pk=pk)


def _visible_version(request: HttpRequest, model_pk: int, number: int) -> ModelVersion:
    model = _visible_model(request, model_pk)
    related = ("model__project", "created_by", "dataset_version__dataset", "dataset_split", "run", "pipeline_run")
    return get_object_or_404(model.versions.select_related(*related), number=number)


# Models


def _render_list(request: HttpRequest, form: ModelUploadForm | None = None, status: int = 200) -> HttpResponse:
    filterset = RegisteredModelFilterSet(request.GET, selectors.model_list(user=request.user), request=request)
    models, filter_status = filter_page(filterset)
    page = Paginator(models, PAGE_SIZE).get_page(request.GET.get("page"))
    editable = _editable_projects(request.user)
    if form is None:
        form = ModelUploadForm(projects=editable, initial={"project": filterset.form.cleaned_data.get("project")})
    return render(
        request,
        "registry/model_list.html",
        {"page": page, "filter": filterset, "form": form, "can_register": editable.exists()},
        status=status if status != 200 else filter_status,
    )


@login_required
@require_GET
def model_list(request: HttpRequest) -> HttpResponse:
    return _render_list(request)


def _register_too_large(request: HttpRequest, message: str) -> HttpResponse:
    form = ModelUploadForm(projects=_editable_projects(request.user))
    form.add_error(None, message)
    return _render_list(request, form, status=413)


@login_required
@require_POST
@upload_view(_register_too_large)
def model_register(request: HttpRequest) -> HttpResponse:
    """Register an uploaded model file as a new version (editors)."""
    form = ModelUploadForm(request.POST, request.FILES, projects=_editable_projects(request.user))
    if not form.is_valid():
        return _render_list(request, form, status=400)
    data = form.cleaned_data
    try:
        version = services.model_version_register_upload(
            project=data["project"],
            model_name=data["model_name"],
            path=data["file"].temporary_file_path(),
            actor=request.user,
            signature=data["signature"],
            label=data["label"],
        )
    except PayloadTooLarge as exc:
        form.add_error(None, str(exc))
        return _render_list(request, form, status=413)
    except ValidationError as exc:
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
        return _render_list(request, form, status=400)
    messages.success(request, f"Registered {version}.")
    return redirect(version)


@login_required
@require_GET
def model_detail(request: HttpRequest, pk: int) -> HttpResponse:
    model = _visible_model(request, pk)
    versions = Paginator(selectors.model_versions(model), VERSIONS_PAGE_SIZE).get_page(request.GET.get("page"))
    requests = selectors.request_list(user=request.user, model=model.pk).filter(status=PromotionRequestStatus.OPEN)
    return render(
        request,
        "registry/model_detail.html",
        {
            "model": model,
            "page": versions,
            "aliases": model.aliases.select_related("version").order_by("name"),
            "production": selectors.production_version(model),
            "open_requests": requests,
            "timeline": selectors.model_timeline(model),
            "role": project_role(request.user, model.project),
        },
    )


# Versions


def _render_version(
    request: HttpRequest,
    version: ModelVersion,
    *,
    form: PromotionRequestForm | None = None,
    load_result: dict[str, Any] | None = None,
    load_error: str = "",
    status: int = 200,
) -> HttpResponse:
    model = version.model
    can_request = has_project_role(request.user, model.project, ProjectRole.EDITOR)
    lineage = selectors.version_lineage(version)
    production = selectors.production_version(model, exclude=version)
    return render(
        request,
        "registry/version_detail.html",
        {
            "model": model,
            "version": version,
            "aliases": version.aliases.all(),
            "form": form or (PromotionRequestForm(current_stage=version.stage) if can_request else None),
            "can_request": can_request,
            "lineage_figure": charts.figure_json(charts.lineage_figure(lineage)),
            "lineage": lineage,
            "production": production,
            "comparison": selectors.version_compare(production, version) if production else None,
            "requests": selectors.request_list(user=request.user).filter(version=version)[:10],
            "load_result": load_result,
            "load_error": load_error,
            "other_versions": model.versions.exclude(pk=version.pk).only("number", "label")[:50],
        },
        status=status,
    )


@login_required
@require_GET
def version_detail(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    return _render_version(request, _visible_version(request, pk, number))


@login_required
@require_POST
def version_load_test(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    """Load the version through the verified loader and predict its input example; show the result or the error."""
    version = _visible_version(request, pk, number)
    try:
        result = services.model_version_load_test(version=version, actor=request.user)
    except services.ModelLoadError as exc:
        return _render_version(request, version, load_error=str(exc), status=409 if exc.integrity else 422)
    return _render_version(request, version, load_result=result)


@login_required
@require_GET
def version_download(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    version = _visible_version(request, pk, number)
    handle = tempfile.TemporaryFile()  # noqa: SIM115 (FileResponse closes it)
    try:
        services.model_version_export(version=version, actor=request.user, target=handle)
    except services.ModelLoadError as exc:
        handle.close()
        messages.error(request, str(exc))
        return _render_version(request, version, load_error=str(exc), status=409)
    handle.seek(0)
    name = f"{version.model.name}-v{version.number}.zip".replace("/", "_")
    return FileResponse(handle, as_attachment=True, filename=name, content_type="application/zip")


@login_required
@require_POST
def request_create(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    version = _visible_version(request, pk, number)
    form = PromotionRequestForm(request.POST, current_stage=version.stage)
    if not form.is_valid():
        return _render_version(request, version, form=form, status=400)
    try:
        promotion = services.promotion_request_create(version=version, actor=request.user, **form.cleaned_data)
    except ValidationError as exc:
        form_errors_from(exc, form)
        return _render_version(request, version, form=form, status=400)
    messages.success(request, f"Requested: {version} → {promotion.target_display}. Approvers have been notified.")
    return redirect(promotion)


@login_required
@require_GET
def version_compare(request: HttpRequest, pk: int) -> HttpResponse:
    model = _visible_model(request, pk)
    versions = list(model.versions.only("id", "number", "label", "stage"))
    numbers = {v.number: v for v in versions}

    def pick(name: str, fallback: int) -> ModelVersion | None:
        raw = request.GET.get(name, "")
        return numbers.get(int(raw)) if raw.isdigit() else (versions[fallback] if len(versions) > fallback else None)

    a, b = pick("a", 1), pick("b", 0)
    comparison = None
    if a is not None and b is not None:
        a, b = model.versions.get(pk=a.pk), model.versions.get(pk=b.pk)
        comparison = selectors.version_compare(a, b)
    return render(
        request,
        "registry/version_compare.html",
        {"model": model, "versions": versions, "a": a, "b": b, "comparison": comparison},
    )


# Approvals


@login_required
@require_GET
def approval_inbox(request: HttpRequest) -> HttpResponse:
    pending = selectors.pending_approvals(request.user).select_related("model__project", "version", "requested_by")
    mine = selectors.request_list(user=request.user, status=PromotionRequestStatus.OPEN).filter(
        requested_by=request.user
    )
    filterset = PromotionRequestFilterSet(request.GET, selectors.request_list(user=request.user), request=request)
    history, status = filter_page(filterset)
    return render(
        request,
        "registry/approval_inbox.html",
        {
            "pending": pending,
            "mine": mine,
            "page": Paginator(history, PAGE_SIZE).get_page(request.GET.get("page")),
            "filter": filterset,
            "can_approve_anywhere": selectors.approvable_projects(request.user).exists(),
        },
        status=status,
    )


def _visible_request(request: HttpRequest, pk: int) -> PromotionRequest:
    queryset = selectors.request_list(user=request.user).select_related("version__dataset_version__dataset")
    return get_object_or_404(queryset.prefetch_related("approvals__approver"), pk=pk)


def _render_request(
    request: HttpRequest, promotion: PromotionRequest, *, form: DecisionForm | None = None, status: int = 200
) -> HttpResponse:
    project = promotion.model.project
    user = request.user
    is_requester = promotion.requested_by_id == user.pk
    already_decided = any(a.approver_id == user.pk for a in promotion.approvals.all())
    can_decide = (
        promotion.is_open
        and not is_requester
        and not already_decided
        and has_project_role(user, project, ProjectRole.APPROVER)
    )
    current = (
        selectors.promotion_gate_checks(version=promotion.version, target_stage=promotion.target_stage)
        if promotion.is_open
        else promotion.decision_gate_checks or promotion.gate_checks
    )
    return render(
        request,
        "registry/request_detail.html",
        {
            "promotion": promotion,
            "model": promotion.model,
            "version": promotion.version,
            "checks": current,
            "checks_at_request": promotion.gate_checks,
            "gates_failed": any(check["status"] == GateCheckStatus.FAIL for check in current),
            "form": form or DecisionForm(),
            "can_decide": can_decide,
            "can_override": can_decide and has_project_role(user, project, ProjectRole.OWNER),
            "can_withdraw": promotion.is_open and is_requester,
            "is_requester": is_requester,
            "approval_count": sum(1 for a in promotion.approvals.all() if a.decision == "approve"),
        },
        status=status,
    )


@login_required
@require_GET
def request_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _render_request(request, _visible_request(request, pk))


def _decide(request: HttpRequest, pk: int, decision: str) -> HttpResponse:
    promotion = _visible_request(request, pk)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        return _render_request(request, promotion, form=form, status=400)
    data = form.cleaned_data
    try:
        if decision == "approve":
            services.promotion_request_approve(
                request=promotion, actor=request.user, comment=data["comment"], override_reason=data["override_reason"]
            )
        elif decision == "reject":
            services.promotion_request_reject(request=promotion, actor=request.user, comment=data["comment"])
        else:
            services.promotion_request_withdraw(request=promotion, actor=request.user, comment=data["comment"])
    except ValidationError as exc:
        form_errors_from(exc, form)
        return _render_request(request, _visible_request(request, pk), form=form, status=400)
    promotion = _visible_request(request, pk)
    verb = {"approve": "Approval recorded", "reject": "Rejected", "withdraw": "Withdrawn"}[decision]
    if promotion.status == PromotionRequestStatus.APPROVED:
        verb = f"Approved: {promotion.version} is now {promotion.target_display}"
    messages.success(request, f"{verb}.")
    return redirect(promotion)


@login_required
@require_POST
def request_approve(request: HttpRequest, pk: int) -> HttpResponse:
    return _decide(request, pk, "approve")


@login_required
@require_POST
def request_reject(request: HttpRequest, pk: int) -> HttpResponse:
    return _decide(request, pk, "reject")


@login_required
@require_POST
def request_withdraw(request: HttpRequest, pk: int) -> HttpResponse:
    return _decide(request, pk, "withdraw")


# Notifications


@login_required
@require_GET
def notification_list(request: HttpRequest) -> HttpResponse:
    notifications = Notification.objects.filter(user=request.user).select_related(
        "event__project", "event__model", "event__request", "event__actor"
    )
    filterset = NotificationFilterSet(request.GET, notifications, request=request)
    notifications, status = filter_page(filterset)
    page = Paginator(notifications, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "registry/notification_list.html", {"page": page, "filter": filterset}, status=status)


@login_required
@require_POST
def notifications_read(request: HttpRequest) -> HttpResponse:
    ids = [int(value) for value in request.POST.getlist("id") if value.isdigit()] or None
    changed = services.notifications_mark_read(user=request.user, ids=ids)
    messages.info(request, f"Marked {changed} notification{'s' if changed != 1 else ''} read.")
    return redirect("registry:notification-list")


# Webhooks and Slack


def _owned_projects(user: object) -> Any:
    projects = Project.objects.for_user(user)
    if getattr(user, "is_staff", False):
        return projects
    return projects.filter(memberships__user=user, memberships__role=ProjectRole.OWNER)


def _render_webhooks(request: HttpRequest, form: WebhookForm | None = None, status: int = 200) -> HttpResponse:
    webhooks = Webhook.objects.filter(project__in=Project.objects.for_user(request.user)).select_related("project")
    filterset = WebhookFilterSet(request.GET, webhooks, request=request)
    webhooks, filter_status = filter_page(filterset)
    page = Paginator(webhooks, PAGE_SIZE).get_page(request.GET.get("page"))
    owned = _owned_projects(request.user)
    context = {
        "page": page,
        "filter": filterset,
        "form": form or WebhookForm(projects=owned),
        "can_add": owned.exists(),
    }
    return render(request, "registry/webhook_list.html", context, status=max(status, filter_status))


@login_required
def webhook_list(request: HttpRequest) -> HttpResponse:
    """The project's webhooks and Slack subscriptions (Slack URLs masked); owners add and delete them."""
    if request.method != "POST":
        return _render_webhooks(request)
    form = WebhookForm(request.POST, projects=_owned_projects(request.user))
    if not form.is_valid():
        return _render_webhooks(request, form=form, status=400)
    try:
        webhook = services.webhook_create(actor=request.user, **form.cleaned_data)
    except ValidationError as exc:
        form_errors_from(exc, form)
        return _render_webhooks(request, form=form, status=400)
    messages.success(request, f"Added {webhook.get_kind_display()} {webhook.shown_url}.")
    return redirect("registry:webhook-detail", pk=webhook.pk)


def _visible_webhook(request: HttpRequest, pk: int) -> Webhook:
    visible = Webhook.objects.filter(project__in=Project.objects.for_user(request.user)).select_related("project")
    return get_object_or_404(visible, pk=pk)


@login_required
@require_GET
def webhook_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """A subscription's deliveries, newest first, each with its attempts."""
    webhook = _visible_webhook(request, pk)
    deliveries = Delivery.objects.filter(source=webhook.source).prefetch_related("attempt_log")
    page = Paginator(deliveries, PAGE_SIZE).get_page(request.GET.get("page"))
    is_owner = has_project_role(request.user, webhook.project, ProjectRole.OWNER)
    return render(request, "registry/webhook_detail.html", {"webhook": webhook, "page": page, "is_owner": is_owner})


@login_required
@require_POST
def webhook_delete(request: HttpRequest, pk: int) -> HttpResponse:
    webhook = _visible_webhook(request, pk)
    shown = webhook.shown_url
    services.webhook_delete(webhook=webhook, actor=request.user)
    messages.info(request, f"Deleted {shown}.")
    return redirect("registry:webhook-list")
