from __future__ import annotations

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.core import services
from apps.core.choices import ProjectRole
from apps.core.filters import AuditEntryFilterSet, ProjectFilterSet, filter_page
from apps.core.forms import APITokenForm, MembershipForm, ProjectForm, RetentionForm
from apps.core.models import APIToken, AuditEntry, Membership, Project
from apps.core.permissions import has_project_role, require_project_role

PAGE_SIZE = 25

logger = logging.getLogger(__name__)


def form_errors_from(exc: ValidationError, form: object) -> None:
    for field, errors in exc.message_dict.items():
        form.add_error(field if field in form.fields else None, errors)


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # noqa: BLE001 - any database failure means "not ready"
        # Anyone may ask: the answer is a status word, the detail (hosts, users) goes to the log only.
        logger.exception("readyz: the database does not answer")
        return JsonResponse({"status": "unavailable", "database": "unavailable"}, status=503)
    return JsonResponse({"status": "ok", "database": "ok"})


@login_required
def home(request: HttpRequest) -> HttpResponse:
    projects = Project.objects.for_user(request.user).prefetch_related("memberships")
    recent = AuditEntry.objects.filter(project__in=projects).select_related("project")[:10]
    return render(request, "core/home.html", {"projects": projects, "recent": recent})


@login_required
@require_http_methods(["GET", "POST"])
def project_list(request: HttpRequest) -> HttpResponse:
    form = ProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            project = services.project_create(owner=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form_errors_from(exc, form)
        else:
            messages.success(request, f"Project {project.name} created. You are its owner.")
            return redirect(project)
    filterset = ProjectFilterSet(request.GET, Project.objects.for_user(request.user), request=request)
    projects, status = filter_page(filterset)
    page = Paginator(projects, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "core/project_list.html", {"page": page, "form": form, "filter": filterset}, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def project_detail(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(Project.objects.for_user(request.user), slug=slug)
    role = require_project_role(request.user, project, ProjectRole.VIEWER)
    form = MembershipForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            membership = services.membership_set(project=project, actor=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form_errors_from(exc, form)
        else:
            messages.success(request, f"{membership.user.username} is now {membership.role}.")
            return redirect(project)
    members = project.memberships.select_related("user").order_by("user__username")
    audit = project.audit.all()[:15]
    return render(
        request,
        "core/project_detail.html",
        {
            "project": project,
            "role": role,
            "members": members,
            "audit": audit,
            "form": form,
            "can_manage": has_project_role(request.user, project, ProjectRole.OWNER),
            "retention_form": RetentionForm(
                initial={
                    "prediction_log_retention_days": project.prediction_log_retention_days,
                    "prediction_rollup_retention_days": project.prediction_rollup_retention_days,
                }
            ),
        },
    )


@login_required
@require_POST
def project_retention(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(Project.objects.for_user(request.user), slug=slug)
    form = RetentionForm(request.POST)
    if form.is_valid():
        services.project_update(project=project, actor=request.user, **form.cleaned_data)
        messages.success(request, "Retention saved.")
    else:
        errors = "; ".join(f"{form.fields[name].label}: {' '.join(texts)}" for name, texts in form.errors.items())
        messages.error(request, f"Retention not saved: {errors}")
    return redirect(project)


@login_required
@require_POST
def membership_remove(request: HttpRequest, slug: str, membership_id: int) -> HttpResponse:
    project = get_object_or_404(Project.objects.for_user(request.user), slug=slug)
    membership = get_object_or_404(Membership, pk=membership_id, project=project)
    services.membership_remove(membership=membership, actor=request.user)
    messages.success(request, f"{membership.user.username} removed from {project.name}.")
    return redirect(project)


@login_required
@require_GET
def audit_log(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(Project.objects.for_user(request.user), slug=slug)
    filterset = AuditEntryFilterSet(request.GET, project.audit.all(), request=request)
    entries, status = filter_page(filterset)
    page = Paginator(entries, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request, "core/audit_log.html", {"project": project, "page": page, "filter": filterset}, status=status
    )


@login_required
@require_http_methods(["GET", "POST"])
def token_list(request: HttpRequest) -> HttpResponse:
    form = APITokenForm(request.POST or None)
    new_key = None
    if request.method == "POST" and form.is_valid():
        _, new_key = services.api_token_create(user=request.user, name=form.cleaned_data["name"])
        form = APITokenForm()
    tokens = APIToken.objects.filter(user=request.user)
    return render(request, "core/token_list.html", {"tokens": tokens, "form": form, "new_key": new_key})


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = get_object_or_404(APIToken, pk=token_id, user=request.user)
    services.api_token_revoke(token=token, actor=request.user)
    messages.success(request, f"Token {token.name} revoked.")
    return redirect("core:token-list")
