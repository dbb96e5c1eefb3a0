"""`manage.py check_drift --deployment-id N [--window 24h]`: run a drift report now and print its verdict."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.choices import JobStatus
from apps.core.exceptions import DomainError
from apps.deployments.models import Deployment
from apps.monitoring import services


class Command(BaseCommand):
    help = "Compare a deployment's logged inputs over a recent window with its reference, as the drift job does."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--deployment-id", type=int, required=True)
        parser.add_argument("--window", default="24h", help="How far back: 1h, 24h, 7d, 2w (default 24h).")

    def handle(self, *args: Any, **options: Any) -> None:
        deployment = Deployment.objects.select_related("project").filter(pk=options["deployment_id"]).first()
        if deployment is None:
            raise CommandError(f"No deployment with id {options['deployment_id']}.")
        try:
            window = services.parse_window(options["window"])
            # The operator at the shell acts as the system, as beat does.
            report = services.check_data_drift(deployment=deployment, actor=None, window=window)
        except DomainError as exc:
            field = f"--{exc.field.replace('_', '-')}: " if exc.field else ""
            raise CommandError(f"{field}{exc}") from None
        if report.status != JobStatus.SUCCEEDED:
            raise CommandError(f"Drift report #{report.pk} {report.status}: {report.reason}")
        window = f"{report.window_start:%Y-%m-%d %H:%M} – {report.window_end:%Y-%m-%d %H:%M} UTC"
        self.stdout.write(f"Drift report #{report.pk}: {window}, {report.n_rows} rows")
        if report.drift_share is None:
            self.stdout.write(f"not enough data: {report.reason}")
            return
        for column in report.result["columns"]:
            verdict = "drifted" if column["drifted"] else ("not tested" if column["drifted"] is None else "ok")
            statistic = "" if column["statistic"] is None else f" {column['test']}={column['statistic']:.4g}"
            self.stdout.write(f"  {column['column']}:{statistic} {verdict}")
        verdict = "DATASET DRIFT" if report.dataset_drift else "no dataset drift"
        self.stdout.write(f"{verdict}: {report.result['n_drifted']} of {report.result['n_tested']} columns drifted")
