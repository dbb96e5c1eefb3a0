"""`manage.py alerts list` and `manage.py alerts silence …`: the alert rules' states and silences from a shell.

    manage.py alerts list [--project SLUG] [--state firing]
    manage.py alerts silence --project SLUG (--rule ID | --deployment NAME | --match team=ml …) \\
        --hours 2 --comment "deploying v3" [--user USERNAME]
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from apps.alerts import services
from apps.alerts.choices import AlertState
from apps.alerts.models import Alert, AlertRule
from apps.core.exceptions import DomainError
from apps.core.models import Project
from apps.deployments.models import Deployment


class Command(BaseCommand):
    help = "List alert rules with their alerts' states, or silence alerts."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="command", required=True)
        listing = commands.add_parser("list", help="Rules and their alerts' current state.")
        listing.add_argument("--project", help="A project slug (default: every project).")
        listing.add_argument("--state", choices=AlertState.values, help="Only alerts in this state.")
        silence = commands.add_parser("silence", help="Mute notifications of matching alerts for a while.")
        silence.add_argument("--project", required=True)
        silence.add_argument("--rule", type=int, help="A rule id.")
        silence.add_argument("--deployment", help="A deployment name.")
        silence.add_argument("--match", action="append", default=[], help="A label matcher name=value (repeatable).")
        silence.add_argument("--hours", type=float, default=2.0)
        silence.add_argument("--comment", required=True)
        silence.add_argument("--user", help="Act as this user (an editor); default: the system.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["command"] == "list":
            self._list(options)
        else:
            self._silence(options)

    def _list(self, options: dict[str, Any]) -> None:
        rules = AlertRule.objects.select_related("project").order_by("project__slug", "name")
        alerts = Alert.objects.select_related("rule__project", "deployment").order_by(
            "rule__project__slug", "rule__name"
        )
        if options["project"]:
            rules = rules.filter(project__slug=options["project"])
            alerts = alerts.filter(rule__project__slug=options["project"])
        if options["state"]:
            alerts = alerts.filter(state=options["state"])
        by_rule: dict[int, list[Alert]] = {}
        for alert in alerts:
            by_rule.setdefault(alert.rule_id, []).append(alert)
        for rule in rules:
            if options["state"] and rule.pk not in by_rule:
                continue
            enabled = "" if rule.enabled else " (off)"
            self.stdout.write(
                f"#{rule.pk} {rule.project.slug}/{rule.name}{enabled}: {rule.condition_display} [{rule.severity}]"
            )
            for alert in by_rule.get(rule.pk, []):
                value = "–" if alert.value is None else f"{alert.value:.4g}"
                silenced = " silenced" if alert.silenced else ""
                self.stdout.write(
                    f"    {alert.deployment.name}: {alert.state}{silenced} value={value} "
                    f"since {alert.state_changed_at:%Y-%m-%d %H:%M:%S} UTC {alert.reason}"
                )

    def _silence(self, options: dict[str, Any]) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"--project: no project {options['project']!r}.")
        actor = None
        if options["user"]:
            actor = get_user_model().objects.filter(username=options["user"]).first()
            if actor is None:
                raise CommandError(f"--user: no user {options['user']!r}.")
        rule = deployment = None
        if options["rule"] is not None:
            rule = AlertRule.objects.filter(pk=options["rule"], project=project).first()
            if rule is None:
                raise CommandError(f"--rule: no rule {options['rule']} in {project.slug}.")
        if options["deployment"]:
            deployment = Deployment.objects.filter(name=options["deployment"], project=project).first()
            if deployment is None:
                raise CommandError(f"--deployment: no deployment {options['deployment']!r} in {project.slug}.")
        matchers = {}
        for matcher in options["match"]:
            name, sep, value = matcher.partition("=")
            if not sep or not name:
                raise CommandError(f"--match: {matcher!r} is not name=value.")
            matchers[name] = value
        if options["hours"] <= 0:
            raise CommandError("--hours: must be positive.")
        now = timezone.now()
        try:
            silence = services.silence_create(
                project=project,
                actor=actor,
                comment=options["comment"],
                starts_at=now,
                ends_at=now + timedelta(hours=options["hours"]),
                rule=rule,
                deployment=deployment,
                matchers=matchers,
            )
        except DomainError as exc:
            field = f"--{exc.field.replace('_', '-')}: " if exc.field else ""
            raise CommandError(f"{field}{exc}") from None
        self.stdout.write(f"Silence #{silence.pk} until {silence.ends_at:%Y-%m-%d %H:%M} UTC.")
