"""The alerts pages: rules (list with current state, editor with a 24 h preview, detail with alerts, history,
notifications and their deliveries, retraining runs), a deployment's alert history, silences and channels.
Thin: every change goes through a service, which checks the role; outsiders get 404, viewers read."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.alerts import charts, selectors, services
from apps.alerts.choices import AlertFigure
from apps.alerts.filters import AlertChannelFilterSet, AlertRuleFilterSet, AlertTransitionFilterSet, SilenceFilterSet
from apps.alerts.forms import ChannelForm, RuleForm, SilenceForm
from apps.alerts.models import AlertChannel, AlertNotification, AlertRule, OwnerNotice, Silence
from apps.core.choices import ProjectRole
from apps.core.exceptions import ValidationError
from apps.core.filters import filter_page
from apps.core.models import Project
from apps.core.permissions import has_project_role, require_project_role
from apps.deployments.models import Deployment

PAGE_SIZE = 25
# Figures the editor previews from rollups and reports; accuracy reads raw rows, too slow for 48 points, and
# event drops are counted from readings only the alert keeps.
PREVIEWABLE = frozenset(AlertFigure.values) - {
    AlertFigure.ACCURACY,
    AlertFigure.ESTIMATED_ACCURACY,
    AlertFigure.EVENT_DROPS,
}


def _editable_projects(request: HttpRequest) -> list[Project]:
    return [p for p in Project.objects.for_user(request.user) if has_project_role(request.user, p, ProjectRole.EDITOR)]


def _page(request: HttpRequest, queryset: Any) -> Any:
    return Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))


@login_required
@require_GET
def rule_list(request: HttpRequest) -> HttpResponse:
    filterset = AlertRuleFilterSet(request.GET, selectors.alert_rules(user=request.user), request=request)
    rules, status = filter_page(filterset)
    notices = OwnerNotice.objects.filter(user=request.user, read_at__isnull=True).select_related("project")[:20]
    projects = [
        p for p in Project.objects.for_user(request.user) if has_project_role(request.user, p, ProjectRole.EDITOR)
    ]
    context = {"page": _page(request, rules), "filter": filterset, "notices": notices, "projects": projects}
    return render(request, "alerts/rule_list.html", context, status=status)


@login_required
@require_POST
def notices_read(request: HttpRequest) -> HttpResponse:
    OwnerNotice.objects.filter(user=request.user, read_at__isnull=True).update(read_at=timezone.now())
    return redirect("alerts:rule-list")


def _preview(rule_values: dict[str, Any], deployment: Deployment | None) -> str | None:
    if deployment is None or rule_values.get("figure") not in PREVIEWABLE:
        return None
    try:
        window = timedelta(seconds=int(rule_values.get("window_seconds") or 300))
        threshold = float(rule_values["threshold"]) if rule_values.get("threshold") not in (None, "") else None
    except (TypeError, ValueError):
        return None
    points = selectors.figure_preview(
        figure=rule_values["figure"],
        column=rule_values.get("column") or "",
        deployment=deployment,
        window=window,
        now=timezone.now(),
    )
    label = AlertFigure(rule_values["figure"]).label
    return charts.figure_json(charts.preview_figure(points, threshold, label))


def _form_data(request: HttpRequest) -> Any:
    """The POSTed form, or the editor's values sent by its Preview button (a GET: nothing is saved)."""
    if request.method == "POST":
        return request.POST
    return request.GET if "preview" in request.GET else None


def _rule_arguments(data: dict[str, Any]) -> dict[str, Any]:
    values = {key: value for key, value in data.items() if key in services.RULE_FIELDS}
    return {
        **values,
        "channels": list(data["channels"]),
        "retrain_from": data.get("retrain_from") or False,
    }


@login_required
@require_http_methods(["GET", "POST"])
def rule_create(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(Project.objects.for_user(request.user), slug=slug)
    # An editor's form: a viewer gets 403 before any input is read (as the service would refuse it).
    require_project_role(request.user, project, ProjectRole.EDITOR)
    initial = {}
    if request.GET.get("deployment", "").isdigit():
        initial["deployment"] = int(request.GET["deployment"])
    form = RuleForm(_form_data(request), project=project, initial=initial)
    if form.is_bound:
        form.is_valid()
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        arguments = _rule_arguments(data)
        arguments["retrain_from"] = arguments["retrain_from"] or None
        try:
            rule = services.alert_rule_create(
                project=project,
                actor=request.user,
                deployment=data["deployment"],
                registered_model=data["registered_model"],
                **arguments,
            )
        except ValidationError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
        else:
            return redirect(rule)
    deployment = form.cleaned_data.get("deployment") if form.is_bound else None
    preview = _preview(form.cleaned_data, deployment) if deployment else None
    return render(
        request, "alerts/rule_form.html", {"form": form, "project": project, "rule": None, "preview": preview}
    )


@login_required
@require_http_methods(["GET", "POST"])
def rule_edit(request: HttpRequest, pk: int) -> HttpResponse:
    rule = get_object_or_404(AlertRule.objects.for_user(request.user).select_related("project", "deployment"), pk=pk)
    require_project_role(request.user, rule.project, ProjectRole.EDITOR)
    initial = {field: getattr(rule, field) for field in services.RULE_FIELDS}
    initial.update(
        {
            "labels": json.dumps(rule.labels),
            "channels": list(rule.channels.all()),
            "deployment": rule.deployment,
            "registered_model": rule.registered_model,
            "retrain_from": rule.retrain_from,
        }
    )
    form = RuleForm(_form_data(request), project=rule.project, initial=initial)
    if form.is_bound:
        form.is_valid()
    if request.method == "POST" and form.is_valid():
        try:
            services.alert_rule_update(rule=rule, actor=request.user, **_rule_arguments(form.cleaned_data))
        except ValidationError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
        else:
            return redirect(rule)
    values = form.cleaned_data if form.is_bound else initial
    preview = _preview(values, values.get("deployment") or rule.deployment)
    context = {"form": form, "project": rule.project, "rule": rule, "preview": preview}
    return render(request, "alerts/rule_form.html", context)


@login_required
@require_GET
def rule_detail(request: HttpRequest, pk: int) -> HttpResponse:
    rule = get_object_or_404(
        AlertRule.objects.for_user(request.user).select_related("project", "deployment", "registered_model"), pk=pk
    )
    transitions = _page(request, selectors.alert_transitions(user=request.user).filter(alert__rule=rule))
    notifications = list(rule.notifications.all()[:20])
    deliveries = selectors.notification_deliveries(notifications)
    context = {
        "rule": rule,
        "alerts": rule.alerts.select_related("deployment"),
        "page": transitions,
        "notifications": [(n, deliveries[n.pk]) for n in notifications],
        "actions": selectors.rule_actions(rule)[:20],
        "silences": rule.silences.filter(ends_at__gt=timezone.now()),
        "channels": rule.channels.all(),
        "preview": _preview({field: getattr(rule, field) for field in services.RULE_FIELDS}, rule.deployment),
        "can_edit": has_project_role(request.user, rule.project, ProjectRole.EDITOR),
        "silence_form": SilenceForm(),
    }
    return render(request, "alerts/rule_detail.html", context)


@login_required
@require_POST
def rule_delete(request: HttpRequest, pk: int) -> HttpResponse:
    rule = get_object_or_404(AlertRule.objects.for_user(request.user).select_related("project"), pk=pk)
    services.alert_rule_delete(rule=rule, actor=request.user)
    return redirect("alerts:rule-list")


@login_required
@require_POST
def rule_defaults(request: HttpRequest, deployment_pk: int) -> HttpResponse:
    """The seed's four rules for the deployment, in one click."""
    deployment = get_object_or_404(
        Deployment.objects.for_user(request.user).select_related("project"), pk=deployment_pk
    )
    services.alert_rules_create_defaults(deployment=deployment, actor=request.user)
    return redirect("alerts:deployment-history", deployment.pk)


@login_required
@require_GET
def deployment_history(request: HttpRequest, deployment_pk: int) -> HttpResponse:
    deployment = get_object_or_404(
        Deployment.objects.for_user(request.user).select_related("project"), pk=deployment_pk
    )
    filterset = AlertTransitionFilterSet(
        request.GET,
        selectors.alert_transitions(user=request.user).filter(alert__deployment=deployment),
        request=request,
    )
    transitions, status = filter_page(filterset)
    context = {
        "deployment": deployment,
        "alerts": selectors.alerts(user=request.user).filter(deployment=deployment),
        "page": _page(request, transitions),
        "filter": filterset,
        "can_edit": has_project_role(request.user, deployment.project, ProjectRole.EDITOR),
    }
    return render(request, "alerts/deployment_history.html", context, status=status)


@login_required
@require_GET
def silence_list(request: HttpRequest) -> HttpResponse:
    filterset = SilenceFilterSet(request.GET, selectors.silences(user=request.user), request=request)
    silences, status = filter_page(filterset)
    return render(
        request,
        "alerts/silence_list.html",
        {"page": _page(request, silences), "filter": filterset, "now": timezone.now()},
        status=status,
    )


@login_required
@require_POST
def silence_create(request: HttpRequest) -> HttpResponse:
    """From a rule's or a deployment's page: silence that rule or deployment (and matchers) for some hours."""
    form = SilenceForm(request.POST)
    rule = deployment = None
    if request.POST.get("rule"):
        rule = get_object_or_404(
            AlertRule.objects.for_user(request.user).select_related("project"), pk=request.POST["rule"]
        )
    if request.POST.get("deployment"):
        deployment = get_object_or_404(
            Deployment.objects.for_user(request.user).select_related("project"), pk=request.POST["deployment"]
        )
    project = rule.project if rule else deployment.project if deployment else None
    if project is None:
        raise ValidationError("Silence a rule or a deployment from its page.", field="rule")
    require_project_role(request.user, project, ProjectRole.EDITOR)
    if not form.is_valid():
        field, errors = next(iter(form.errors.items()))
        raise ValidationError(" ".join(errors), field=field)
    services.silence_create(
        project=project,
        actor=request.user,
        comment=form.cleaned_data["comment"],
        ends_at=timezone.now() + timedelta(hours=form.cleaned_data["hours"]),
        rule=rule,
        deployment=deployment,
        matchers=form.cleaned_data["matchers"],
    )
    return redirect("alerts:silence-list")


@login_required
@require_POST
def silence_expire(request: HttpRequest, pk: int) -> HttpResponse:
    silence = get_object_or_404(Silence.objects.for_user(request.user).select_related("project"), pk=pk)
    services.silence_expire(silence=silence, actor=request.user)
    return redirect("alerts:silence-list")


@login_required
@require_GET
def channel_list(request: HttpRequest) -> HttpResponse:
    filterset = AlertChannelFilterSet(request.GET, selectors.alert_channels(user=request.user), request=request)
    channels, status = filter_page(filterset)
    return render(
        request,
        "alerts/channel_list.html",
        {"page": _page(request, channels), "filter": filterset, "projects": _editable_projects(request)},
        status=status,
    )


@login_required
@require_http_methods(["GET", "POST"])
def channel_create(request: HttpRequest, slug: str) -> HttpResponse:
    project = get_object_or_404(Project.objects.for_user(request.user), slug=slug)
    require_project_role(request.user, project, ProjectRole.EDITOR)
    form = ChannelForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            channel = services.alert_channel_create(
                project=project,
                actor=request.user,
                name=data["name"],
                kind=data["kind"],
                config={"addresses": data["addresses"], "url": data["url"], "secret": data["secret"]},
            )
        except ValidationError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
        else:
            return redirect(channel)
    return render(request, "alerts/channel_form.html", {"form": form, "project": project})


@login_required
@require_GET
def channel_detail(request: HttpRequest, pk: int) -> HttpResponse:
    channel = get_object_or_404(selectors.alert_channels(user=request.user), pk=pk)
    tests = list(AlertNotification.objects.filter(channel=channel)[:10])
    deliveries = selectors.notification_deliveries(tests)
    context = {
        "channel": channel,
        "tests": [(n, deliveries[n.pk]) for n in tests],
        "rules": channel.rules.all(),
        "can_edit": has_project_role(request.user, channel.project, ProjectRole.EDITOR),
    }
    return render(request, "alerts/channel_detail.html", context)


@login_required
@require_POST
def channel_test(request: HttpRequest, pk: int) -> HttpResponse:
    channel = get_object_or_404(AlertChannel.objects.for_user(request.user).select_related("project"), pk=pk)
    services.alert_channel_test(channel=channel, actor=request.user)
    return redirect(channel)


@login_required
@require_POST
def channel_delete(request: HttpRequest, pk: int) -> HttpResponse:
    channel = get_object_or_404(AlertChannel.objects.for_user(request.user).select_related("project"), pk=pk)
    services.alert_channel_delete(channel=channel, actor=request.user)
    return redirect("alerts:channel-list")
