"""Use cases of alerts: channels (create, delete, send a test), rules (create, update, delete, the seed's
defaults for a deployment), silences (create, expire), and the evaluation round the beat runs.

Evaluation claims one due rule at a time with `SELECT … FOR UPDATE SKIP LOCKED` inside the transaction that
evaluates it: two beats or workers never evaluate one rule at once (the second skips the locked row, and
finds it no longer due once the first commits). The alerts' states, their transitions and the outbox rows
of the notifications are written in that same transaction, so a notification exists exactly when the state
change that caused it does.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import URLValidator, validate_email
from django.db import transaction
from django.utils import timezone

from apps.alerts import figures, notify
from apps.alerts.choices import AlertComparator, AlertFigure, AlertNotificationKind, AlertSeverity
from apps.alerts.models import Alert, AlertChannel, AlertRule, AlertTransition, Silence
from apps.core.choices import ProjectRole
from apps.core.exceptions import Conflict, ValidationError
from apps.core.models import Project
from apps.core.notifications.channels import TRANSPORTS
from apps.core.notifications.choices import NotificationChannel
from apps.core.permissions import require_project_role
from apps.core.services import audit_record
from apps.deployments.models import Deployment
from apps.experiments.models import PipelineRun
from apps.registry.models import RegisteredModel
from worker.alerts import evaluate as engine

logger = logging.getLogger(__name__)

MAX_WINDOW_SECONDS = 7 * 24 * 3600
MIN_WINDOW_SECONDS = 60
MAX_EMAIL_ADDRESSES = 20
# A round evaluates at most this many rules; the next round takes the rest.
ROUND_LIMIT = 5_000
# Rules claimed (and evaluated) per transaction: their reads and writes are batched.
CLAIM_BATCH = 100
RULE_FIELDS = (
    "name",
    "figure",
    "column",
    "comparator",
    "threshold",
    "threshold_from_validation",
    "window_seconds",
    "for_seconds",
    "keep_firing_for_seconds",
    "repeat_interval_seconds",
    "send_resolved",
    "severity",
    "labels",
    "runbook_url",
    "enabled",
    "retrain_cooldown_seconds",
    "retrain_open_promotion",
    "retrain_abtest_percent",
)


# Channels


def _clean_channel_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    if kind == NotificationChannel.EMAIL:
        addresses = config.get("addresses")
        if isinstance(addresses, str):
            addresses = [part.strip() for part in addresses.replace(";", ",").split(",") if part.strip()]
        if not isinstance(addresses, list) or not addresses:
            raise ValidationError("Give at least one email address.", field="addresses")
        if len(addresses) > MAX_EMAIL_ADDRESSES:
            raise ValidationError(f"At most {MAX_EMAIL_ADDRESSES} addresses per channel.", field="addresses")
        for address in addresses:
            try:
                validate_email(address)
            except DjangoValidationError:
                raise ValidationError(f"{address!r} is not an email address.", field="addresses") from None
        return {"addresses": list(dict.fromkeys(addresses))}
    url = str(config.get("url") or "").strip()
    if not url:
        raise ValidationError("Give the URL to post to.", field="url")
    cleaned = {"url": url}
    if kind == NotificationChannel.WEBHOOK:
        secret = str(config.get("secret") or "").strip()
        if len(secret) < 16:
            raise ValidationError("The HMAC secret must be at least 16 characters.", field="secret")
        cleaned["secret"] = secret
    try:
        TRANSPORTS[kind].check(cleaned)
    except DjangoValidationError as exc:
        raise ValidationError(" ".join(sum(exc.message_dict.values(), [])), field="url") from None
    return cleaned


@transaction.atomic
def alert_channel_create(
    *, project: Project, actor: AbstractBaseUser, name: str, kind: str, config: dict[str, Any]
) -> AlertChannel:
    """A channel (editors); the URL of Slack and webhook channels must reach a public address (SSRF)."""
    require_project_role(actor, project, ProjectRole.EDITOR)
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise ValidationError("A name of 1 to 100 characters.", field="name")
    if kind not in NotificationChannel.values:
        raise ValidationError(f"Choose one of {', '.join(NotificationChannel.values)}.", field="kind")
    if AlertChannel.objects.filter(project=project, name=name).exists():
        raise Conflict(f"Project {project.slug!r} already has a channel named {name!r}.", field="name")
    channel = AlertChannel.objects.create(
        project=project, name=name, kind=kind, config=_clean_channel_config(kind, config), created_by=actor
    )
    audit_record(
        actor=actor,
        action="alert_channel.created",
        obj=channel,
        project=project,
        after={"kind": kind, "to": channel.shown},
    )
    return channel


@transaction.atomic
def alert_channel_delete(*, channel: AlertChannel, actor: AbstractBaseUser) -> None:
    require_project_role(actor, channel.project, ProjectRole.EDITOR)
    audit_record(
        actor=actor, action="alert_channel.deleted", obj=channel, project=channel.project, before={"name": channel.name}
    )
    channel.delete()


@transaction.atomic
def alert_channel_test(*, channel: AlertChannel, actor: AbstractBaseUser) -> Any:
    """Send a test notification to every target of the channel (editors); its deliveries show on the page."""
    require_project_role(actor, channel.project, ProjectRole.EDITOR)
    return notify.channel_test_notify(channel=channel)


# Rules


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool):
        raise ValidationError("Must be a number.", field=field)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{value!r} is not a number.", field=field) from None
    if not math.isfinite(number):
        raise ValidationError("Must be a finite number.", field=field)
    return number


def _seconds(value: Any, field: str, *, minimum: int = 0, maximum: int = MAX_WINDOW_SECONDS) -> int:
    number = _number(value, field)
    if number != int(number) or not minimum <= number <= maximum:
        raise ValidationError(f"Whole seconds between {minimum} and {maximum}.", field=field)
    return int(number)


def _clean_rule(data: dict[str, Any]) -> dict[str, Any]:
    """The rule's fields checked one by one; each refusal names its field."""
    interval = settings.ALERTS_EVALUATION_INTERVAL_SECONDS
    cleaned: dict[str, Any] = {}
    if "name" in data:
        name = str(data["name"] or "").strip()
        if not name or len(name) > 100:
            raise ValidationError("A name of 1 to 100 characters.", field="name")
        cleaned["name"] = name
    if "figure" in data:
        if data["figure"] not in AlertFigure.values:
            raise ValidationError(
                f"Unknown figure {data['figure']!r}; choose one of {', '.join(AlertFigure.values)}.", field="figure"
            )
        cleaned["figure"] = data["figure"]
    if "column" in data:
        cleaned["column"] = str(data["column"] or "").strip()[:200]
    if "comparator" in data:
        if data["comparator"] not in AlertComparator.values:
            raise ValidationError(f"Choose one of {', '.join(AlertComparator.values)}.", field="comparator")
        cleaned["comparator"] = data["comparator"]
    if "threshold" in data:
        cleaned["threshold"] = _number(data["threshold"], "threshold")
    if "window_seconds" in data:
        cleaned["window_seconds"] = _seconds(data["window_seconds"], "window_seconds", minimum=MIN_WINDOW_SECONDS)
    if "for_seconds" in data:
        cleaned["for_seconds"] = _seconds(data["for_seconds"], "for_seconds")
        if 0 < cleaned["for_seconds"] < interval:
            raise ValidationError(
                f"`for` is 0 (fire at once) or at least the evaluation interval ({interval} s): a shorter one "
                "cannot be told apart from one evaluation.",
                field="for_seconds",
            )
    if "keep_firing_for_seconds" in data:
        cleaned["keep_firing_for_seconds"] = _seconds(data["keep_firing_for_seconds"], "keep_firing_for_seconds")
    if "repeat_interval_seconds" in data:
        cleaned["repeat_interval_seconds"] = _seconds(
            data["repeat_interval_seconds"], "repeat_interval_seconds", minimum=60
        )
    if "retrain_cooldown_seconds" in data:
        cleaned["retrain_cooldown_seconds"] = _seconds(
            data["retrain_cooldown_seconds"], "retrain_cooldown_seconds", minimum=60, maximum=365 * 24 * 3600
        )
    if "retrain_abtest_percent" in data:
        percent = _number(data["retrain_abtest_percent"], "retrain_abtest_percent")
        if percent != int(percent) or not 0 <= percent <= 99:
            raise ValidationError(
                "0 (no A/B test) or the challenger's whole percentage of the traffic, 1 to 99.",
                field="retrain_abtest_percent",
            )
        cleaned["retrain_abtest_percent"] = int(percent)
    for flag in ("threshold_from_validation", "send_resolved", "enabled", "retrain_open_promotion"):
        if flag in data:
            cleaned[flag] = bool(data[flag])
    if "severity" in data:
        if data["severity"] not in AlertSeverity.values:
            raise ValidationError(f"Choose one of {', '.join(AlertSeverity.values)}.", field="severity")
        cleaned["severity"] = data["severity"]
    if "labels" in data:
        labels = data["labels"] or {}
        if not isinstance(labels, dict) or not all(
            isinstance(key, str) and isinstance(value, str | int | float) for key, value in labels.items()
        ):
            raise ValidationError("Labels are an object of names to text values.", field="labels")
        cleaned["labels"] = {key: str(value) for key, value in labels.items()}
    if "runbook_url" in data:
        url = str(data["runbook_url"] or "").strip()
        if url:
            try:
                URLValidator(schemes=["http", "https"])(url)
            except DjangoValidationError:
                raise ValidationError("An http(s) URL.", field="runbook_url") from None
        cleaned["runbook_url"] = url
    return cleaned


def _check_rule(rule: AlertRule) -> None:
    if rule.figure == AlertFigure.COLUMN_DRIFT and not rule.column:
        raise ValidationError("Name the column whose drift statistic the rule watches.", field="column")
    if rule.threshold_from_validation and rule.figure not in figures.VALIDATION_METRIC:
        raise ValidationError(
            "Only accuracy figures have a registered validation value to offset.", field="threshold_from_validation"
        )


def _targets(
    project: Project, deployment: Deployment | None, registered_model: RegisteredModel | None
) -> tuple[Deployment | None, RegisteredModel | None]:
    if (deployment is None) == (registered_model is None):
        raise ValidationError("Target a deployment or a registered model (every deployment of it).", field="deployment")
    if deployment is not None and deployment.project_id != project.pk:
        raise ValidationError("The deployment belongs to another project.", field="deployment")
    if registered_model is not None and registered_model.project_id != project.pk:
        raise ValidationError("The model belongs to another project.", field="registered_model")
    return deployment, registered_model


def _set_relations(rule: AlertRule, channels: list[AlertChannel] | None, retrain_from: Any) -> None:
    if channels is not None:
        if any(channel.project_id != rule.project_id for channel in channels):
            raise ValidationError("Every channel must belong to the rule's project.", field="channels")
        rule.channels.set(channels)
    if retrain_from is not None:
        if retrain_from and retrain_from.project_id != rule.project_id:
            raise ValidationError("The pipeline run belongs to another project.", field="retrain_from")
        if retrain_from and not retrain_from.config_text:
            # The stored config is normalised and cannot be given again; the text it came from can.
            raise ValidationError(
                "Retrain from a pipeline run started from a YAML or JSON config text (config_yaml).",
                field="retrain_from",
            )
        AlertRule.objects.filter(pk=rule.pk).update(retrain_from=retrain_from or None)
        rule.retrain_from = retrain_from or None


def alert_rule_create(
    *,
    project: Project,
    actor: AbstractBaseUser | None,
    deployment: Deployment | None = None,
    registered_model: RegisteredModel | None = None,
    channels: list[AlertChannel] | None = None,
    retrain_from: PipelineRun | None = None,
    **data: Any,
) -> AlertRule:
    """A rule (editors). `data` holds RULE_FIELDS; name, figure, comparator and threshold are required."""
    if actor is not None:
        require_project_role(actor, project, ProjectRole.EDITOR)
    for required in ("name", "figure", "comparator", "threshold"):
        if data.get(required) in (None, ""):
            raise ValidationError("This field is required.", field=required)
    unknown = set(data) - set(RULE_FIELDS)
    if unknown:
        raise ValidationError("Unknown field.", field=sorted(unknown)[0])
    cleaned = _clean_rule(data)
    deployment, registered_model = _targets(project, deployment, registered_model)
    with transaction.atomic():
        if AlertRule.objects.filter(project=project, name=cleaned["name"]).exists():
            raise Conflict(f"Project {project.slug!r} already has a rule named {cleaned['name']!r}.", field="name")
        rule = AlertRule(
            project=project, deployment=deployment, registered_model=registered_model, created_by=actor, **cleaned
        )
        _check_rule(rule)
        rule.save()
        _set_relations(rule, channels, retrain_from)
        audit_record(
            actor=actor,
            action="alert_rule.created",
            obj=rule,
            project=project,
            after={"condition": rule.condition_display, "target": rule.target_display},
        )
    return rule


@transaction.atomic
def alert_rule_update(
    *,
    rule: AlertRule,
    actor: AbstractBaseUser,
    channels: list[AlertChannel] | None = None,
    retrain_from: PipelineRun | None | bool = None,
    **data: Any,
) -> AlertRule:
    """Change a rule (editors); the alerts keep their state and are evaluated with the new condition next."""
    require_project_role(actor, rule.project, ProjectRole.EDITOR)
    unknown = set(data) - set(RULE_FIELDS)
    if unknown:
        raise ValidationError("Unknown field.", field=sorted(unknown)[0])
    cleaned = _clean_rule(data)
    rule = AlertRule.objects.select_for_update().select_related("project").get(pk=rule.pk)
    if (
        "name" in cleaned
        and AlertRule.objects.filter(project=rule.project, name=cleaned["name"]).exclude(pk=rule.pk).exists()
    ):
        raise Conflict(f"Project {rule.project.slug!r} already has a rule named {cleaned['name']!r}.", field="name")
    before = {field: getattr(rule, field) for field in cleaned if getattr(rule, field) != cleaned[field]}
    for field, value in cleaned.items():
        setattr(rule, field, value)
    _check_rule(rule)
    rule.next_evaluation_at = timezone.now()
    rule.save()
    _set_relations(rule, channels, retrain_from)
    audit_record(
        actor=actor,
        action="alert_rule.updated",
        obj=rule,
        project=rule.project,
        before={key: str(value) for key, value in before.items()},
        after={key: str(cleaned[key]) for key in before},
    )
    return rule


@transaction.atomic
def alert_rule_delete(*, rule: AlertRule, actor: AbstractBaseUser) -> None:
    require_project_role(actor, rule.project, ProjectRole.EDITOR)
    audit_record(actor=actor, action="alert_rule.deleted", obj=rule, project=rule.project, before={"name": rule.name})
    rule.delete()


# The seed's defaults: what the console recommends watching on every deployment.
DEFAULT_RULES: tuple[dict[str, Any], ...] = (
    {
        "key": "accuracy",
        "figure": AlertFigure.ACCURACY,
        "comparator": AlertComparator.LT,
        "threshold": -0.05,
        "threshold_from_validation": True,
        "window_seconds": 3600,
        "for_seconds": 0,
        "severity": AlertSeverity.WARNING,
    },
    {
        "key": "drift",
        "figure": AlertFigure.DRIFT_SHARE,
        "comparator": AlertComparator.GE,
        "threshold": 0.5,
        "window_seconds": 2 * 3600,
        "for_seconds": 0,
        "severity": AlertSeverity.WARNING,
    },
    {
        "key": "errors",
        "figure": AlertFigure.ERROR_RATE,
        "comparator": AlertComparator.GT,
        "threshold": 0.01,
        "window_seconds": 300,
        "for_seconds": 120,
        "severity": AlertSeverity.CRITICAL,
    },
    {
        "key": "latency",
        "figure": AlertFigure.LATENCY_P99,
        "comparator": AlertComparator.GT,
        "threshold": 500.0,
        "window_seconds": 300,
        "for_seconds": 120,
        "severity": AlertSeverity.WARNING,
    },
)


def alert_rules_create_defaults(
    *, deployment: Deployment, actor: AbstractBaseUser, channels: list[AlertChannel] | None = None
) -> list[AlertRule]:
    """The seed's four ready-made rules for one deployment (editors), one click; a default that already exists
    (by name) is left as it is, so clicking twice creates nothing more."""
    require_project_role(actor, deployment.project, ProjectRole.EDITOR)
    created = []
    with transaction.atomic():
        for default in DEFAULT_RULES:
            values = {key: value for key, value in default.items() if key != "key"}
            name = f"{deployment.name}: {default['key']}"
            if AlertRule.objects.filter(project=deployment.project, name=name).exists():
                continue
            created.append(
                alert_rule_create(
                    project=deployment.project,
                    actor=actor,
                    deployment=deployment,
                    channels=channels,
                    name=name,
                    labels={"deployment": deployment.name},
                    **values,
                )
            )
    return created


# Silences


@transaction.atomic
def silence_create(
    *,
    project: Project,
    actor: AbstractBaseUser | None,
    comment: str,
    ends_at: datetime | None,
    starts_at: datetime | None = None,
    rule: AlertRule | None = None,
    deployment: Deployment | None = None,
    matchers: dict[str, Any] | None = None,
) -> Silence:
    """Mute the notifications of matching alerts between start and end (editors); their states still change.
    `actor=None` is the system (an operator's `manage.py alerts silence`)."""
    if actor is not None:
        require_project_role(actor, project, ProjectRole.EDITOR)
    starts_at = starts_at or timezone.now()
    comment = (comment or "").strip()
    if not comment:
        raise ValidationError("Say why (the people paged later will read it).", field="comment")
    if ends_at is None:
        raise ValidationError("Give ends_at or hours.", field="ends_at")
    if ends_at <= starts_at:
        raise ValidationError("The end must be after the start.", field="ends_at")
    matchers = matchers or {}
    if not isinstance(matchers, dict) or not all(isinstance(key, str) for key in matchers):
        raise ValidationError("Matchers are an object of label names to values.", field="matchers")
    if rule is None and deployment is None and not matchers:
        raise ValidationError("Silence a rule, a deployment or label matchers, not everything.", field="matchers")
    if rule is not None and rule.project_id != project.pk:
        raise ValidationError("The rule belongs to another project.", field="rule")
    if deployment is not None and deployment.project_id != project.pk:
        raise ValidationError("The deployment belongs to another project.", field="deployment")
    silence = Silence.objects.create(
        project=project,
        rule=rule,
        deployment=deployment,
        matchers={key: str(value) for key, value in matchers.items()},
        starts_at=starts_at,
        ends_at=ends_at,
        comment=comment,
        created_by=actor,
    )
    audit_record(
        actor=actor,
        action="silence.created",
        obj=silence,
        project=project,
        after={"until": ends_at.isoformat(), "comment": comment},
    )
    return silence


@transaction.atomic
def silence_expire(*, silence: Silence, actor: AbstractBaseUser) -> Silence:
    """End a silence now (editors)."""
    require_project_role(actor, silence.project, ProjectRole.EDITOR)
    silence = Silence.objects.select_for_update().get(pk=silence.pk)
    now = timezone.now()
    if silence.ends_at <= now:
        raise Conflict("The silence has already ended.")
    silence.ends_at = max(now, silence.starts_at + timedelta(microseconds=1))
    silence.save(update_fields=["ends_at"])
    audit_record(actor=actor, action="silence.expired", obj=silence, project=silence.project)
    return silence


# Evaluation


@dataclass(frozen=True)
class RoundResult:
    rules: int
    transitions: int
    notifications: int
    seconds: float


def _observe(
    rule: AlertRule, alert: Alert, deployment: Deployment, cache: figures.FigureCache
) -> tuple[engine.Observation, float | None]:
    """The figure and the threshold in force; a failure to compute either is an `error` observation. A figure
    that keeps state between evaluations (event drops) updates `alert.figure_state`."""
    try:
        if rule.figure == AlertFigure.EVENT_DROPS:
            observation, alert.figure_state = figures.event_drops(
                deployment=deployment,
                window=timedelta(seconds=rule.window_seconds),
                cache=cache,
                state=alert.figure_state,
            )
            return observation, rule.threshold
        threshold: float | None = rule.threshold
        if rule.threshold_from_validation:
            base, reason = figures.validation_value(figure=rule.figure, deployment=deployment, cache=cache)
            if base is None:
                return engine.Observation(None, reason), None
            threshold = base + rule.threshold
        observation = figures.observe(
            figure=rule.figure,
            column=rule.column,
            deployment=deployment,
            window=timedelta(seconds=rule.window_seconds),
            cache=cache,
        )
        return observation, threshold
    except Exception as exc:  # noqa: BLE001 (any failure of a figure is shown on the alert, not lost)
        logger.exception("alert rule %s: computing %s of %s failed", rule.pk, rule.figure, deployment)
        return engine.Observation(None, f"{type(exc).__name__}: {exc}", error=True), None


@dataclass
class _Step:
    alert: Alert
    step: engine.Transition | None  # None: the deployment is no longer a target and the alert ends


def _rule_steps(
    rule: AlertRule,
    deployments: list[Deployment],
    alerts: dict[int, Alert],
    now: datetime,
    cache: figures.FigureCache,
    silences: list[Silence],
) -> list[_Step]:
    """The next state of each of the rule's alerts (nothing written yet)."""
    steps = []
    for deployment in deployments:
        alert = alerts.pop(deployment.pk, None) or Alert(rule=rule, deployment=deployment)
        alert.deployment = deployment
        observation, threshold = _observe(rule, alert, deployment, cache)
        condition = engine.Condition(
            comparator=rule.comparator,
            threshold=threshold if threshold is not None else 0.0,
            for_seconds=rule.for_seconds,
            keep_firing_for_seconds=rule.keep_firing_for_seconds,
        )
        state = engine.AlertState(alert.state, alert.active_since, alert.firing_since, alert.last_true_at)
        step = engine.evaluate(state, condition, observation, now)
        alert.silenced = any(silence.matches(rule, deployment.pk, now) for silence in silences)
        alert.state = step.after.state
        alert.active_since, alert.firing_since, alert.last_true_at = (
            step.after.active_since,
            step.after.firing_since,
            step.after.last_true_at,
        )
        alert.value, alert.threshold, alert.reason, alert.evaluated_at = step.value, threshold, step.reason, now
        if step.changed:
            alert.state_changed_at = now
        steps.append(_Step(alert, step))
    # Alerts of deployments the rule no longer covers (stopped, or no longer of the model) end as resolved.
    for alert in alerts.values():
        if alert.state in (engine.FIRING, engine.PENDING):
            steps.append(_Step(alert, None))
    return steps


ALERT_FIELDS = [
    "state",
    "value",
    "threshold",
    "reason",
    "active_since",
    "firing_since",
    "last_true_at",
    "state_changed_at",
    "evaluated_at",
    "silenced",
    "figure_state",
]


def _save_steps(steps: list[_Step], now: datetime) -> int:
    """Write a batch's alerts (bulk) and their transitions; returns the number of transitions."""
    transitions = []
    for item in steps:
        if item.step is None:
            transitions.append((item.alert, item.alert.state, engine.RESOLVED, None, "no longer a target"))
            item.alert.state, item.alert.state_changed_at, item.alert.firing_since = engine.RESOLVED, now, None
        elif item.step.changed:
            transitions.append((item.alert, item.step.before, item.step.after.state, item.step.value, item.step.reason))
    new = [item.alert for item in steps if item.alert.pk is None]
    existing = [item.alert for item in steps if item.alert.pk is not None]
    Alert.objects.bulk_create(new)
    Alert.objects.bulk_update(existing, ALERT_FIELDS)
    AlertTransition.objects.bulk_create(
        [
            AlertTransition(
                alert=alert,
                from_state=before,
                to_state=after,
                value=value,
                threshold=alert.threshold,
                reason=reason,
                silenced=alert.silenced,
                at=now,
            )
            for alert, before, after, value, reason in transitions
        ]
    )
    return len(transitions)


def _notify_group(rule: AlertRule, alerts: list[Alert], now: datetime) -> int:
    """One notification when the group (the rule's alerts) starts firing or gains an alert, a reminder per
    repeat interval while it fires, one when it resolves. Silenced alerts are left out."""
    firing = [alert for alert in alerts if alert.state == engine.FIRING and not alert.silenced]
    firing_ids = sorted(alert.pk for alert in firing)
    notified = set(rule.group_firing)
    kind = None
    if set(firing_ids) - notified:
        kind = AlertNotificationKind.FIRING
    elif firing and engine.repeat_due(rule.group_notified_at, rule.repeat_interval_seconds, now):
        kind = AlertNotificationKind.REPEAT
    elif not firing and notified and rule.send_resolved:
        kind = AlertNotificationKind.RESOLVED
    changes: dict[str, Any] = {}
    if kind is not None:
        named = firing or [alert for alert in alerts if alert.pk in notified]
        notify.rule_notify(rule=rule, kind=kind, alerts=named)
        changes["group_notified_at"] = now
    if firing_ids != sorted(notified):
        changes["group_firing"] = firing_ids
    if changes:
        AlertRule.objects.filter(pk=rule.pk).update(**changes)
    return int(kind is not None)


def _retrain(rule: AlertRule, alert: Alert, now: datetime) -> None:
    """Start the retraining pipeline once per cooldown, with the alert in its run's tags (its lineage)."""
    if rule.last_retrain_at and now - rule.last_retrain_at < timedelta(seconds=rule.retrain_cooldown_seconds):
        return
    from apps.alerts.actions import retrain_start

    AlertRule.objects.filter(pk=rule.pk).update(last_retrain_at=now)
    retrain_start(rule=rule, alert=alert)


def _evaluate_batch(rules: list[AlertRule], now: datetime, cache: figures.FigureCache) -> tuple[int, int]:
    """Evaluate claimed (locked) rules in the caller's transaction: read what they need in a few queries,
    step every alert, write the alerts and transitions in bulk, then notify each group and start actions."""
    model_ids = {rule.registered_model_id for rule in rules if rule.registered_model_id}
    by_model: dict[int, list[Deployment]] = {}
    for deployment in Deployment.objects.filter(registered_model_id__in=model_ids).active().order_by("pk"):
        by_model.setdefault(deployment.registered_model_id, []).append(deployment)
    targets = {
        rule.pk: [rule.deployment] if rule.deployment_id else by_model.get(rule.registered_model_id, [])
        for rule in rules
    }
    cache.prefetch([(rule, deployment) for rule in rules for deployment in targets[rule.pk]])
    existing: dict[int, dict[int, Alert]] = {rule.pk: {} for rule in rules}
    for alert in Alert.objects.filter(rule__in=rules):
        existing[alert.rule_id][alert.deployment_id] = alert
    silences: dict[int, list[Silence]] = {}
    for silence in Silence.objects.filter(
        project_id__in={rule.project_id for rule in rules}, starts_at__lte=now, ends_at__gt=now
    ):
        silences.setdefault(silence.project_id, []).append(silence)
    steps = {
        rule.pk: _rule_steps(rule, targets[rule.pk], existing[rule.pk], now, cache, silences.get(rule.project_id, []))
        for rule in rules
    }
    transitions = _save_steps([item for rule_steps in steps.values() for item in rule_steps], now)
    notifications = 0
    for rule in rules:
        current = [item.alert for item in steps[rule.pk] if item.step is not None]
        notifications += _notify_group(rule, current, now)
        started = [item.alert for item in steps[rule.pk] if item.step is not None and item.step.event == "firing"]
        if started and rule.retrain_from_id:
            _retrain(rule, started[0], now)
    return transitions, notifications


def alert_rules_evaluate_due(*, now: datetime | None = None, limit: int = ROUND_LIMIT) -> RoundResult:
    """One round (beat): claim due rules in batches with FOR UPDATE SKIP LOCKED, evaluate each batch in the
    transaction that holds its locks, and make its rules due again one interval later. Safe to run in several
    workers at once: a rule another worker holds is skipped, and is no longer due once that worker commits."""
    started = time.perf_counter()
    now = now or timezone.now()
    interval = timedelta(seconds=settings.ALERTS_EVALUATION_INTERVAL_SECONDS)
    cache = figures.FigureCache(now=now)
    rules = transitions = notifications = 0
    while rules < limit:
        with transaction.atomic():
            batch = list(
                AlertRule.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("project", "deployment", "registered_model")
                .prefetch_related("channels")
                .filter(enabled=True, next_evaluation_at__lte=now)
                .order_by("next_evaluation_at", "pk")[: min(CLAIM_BATCH, limit - rules)]
            )
            if not batch:
                break
            changed, sent = _evaluate_batch(batch, now, cache)
            AlertRule.objects.filter(pk__in=[rule.pk for rule in batch]).update(
                next_evaluation_at=now + interval, evaluated_at=now
            )
        rules += len(batch)
        transitions += changed
        notifications += sent
    return RoundResult(rules, transitions, notifications, time.perf_counter() - started)


def alert_rule_evaluate_now(*, rule: AlertRule, actor: AbstractBaseUser) -> AlertRule:
    """Make the rule due at once (editors): the next round evaluates it."""
    require_project_role(actor, rule.project, ProjectRole.EDITOR)
    AlertRule.objects.filter(pk=rule.pk).update(next_evaluation_at=timezone.now())
    return rule
