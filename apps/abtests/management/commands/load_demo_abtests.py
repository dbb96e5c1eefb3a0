"""The demo's finished A/B tests: the two iris-classifier versions of the registry demo compared on a staging
deployment, once on accuracy (feedback labels) and once on conversion (posted outcomes), each with a week of
traffic, daily readouts and a recorded decision. Needs no model server: the traffic is written through
telemetry's ingest service, routed by the model server's own sticky split (serving.app `TrafficSplit`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apps.abtests import services
from apps.abtests.models import ABTest, ABTestReadout
from apps.core.models import Project
from apps.core.services import normalize_name
from apps.deployments import services as deployment_services
from apps.deployments.choices import DeploymentStatus
from apps.deployments.models import Deployment
from apps.registry.models import RegisteredModel
from apps.telemetry.services import IngestSource, prediction_labels_store, predictions_ingest
from serving.app import TrafficSplit

MODEL_NAME = "iris-classifier"
DEPLOYMENT_NAME = "iris-ab"
CLASSES = ["setosa", "versicolor", "virginica"]
EVENT_BATCH = 500
DAYS = 6


@dataclass(frozen=True)
class DemoTest:
    name: str
    metric: str
    baseline: float
    mde: float
    rates: tuple[float, float]  # control, treatment: accuracy or conversion
    starts_days_ago: int
    seed: int


DEMO_TESTS = (
    DemoTest("iris v1.1.0 vs v1.0.0: accuracy", "accuracy", 0.85, 0.06, (0.85, 0.95), 14, 1),
    DemoTest("iris v1.1.0 vs v1.0.0: conversion", "conversion", 0.2, 0.08, (0.20, 0.30), 7, 2),
)


class Command(BaseCommand):
    help = (
        "Leave two finished A/B tests between the demo iris-classifier versions on a stopped staging deployment "
        "(iris-ab), with labels, outcomes and daily readouts (idempotent; no model server needed)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        project = Project.objects.filter(slug="demo").first()
        model = RegisteredModel.objects.filter(project=project, name_key=normalize_name(MODEL_NAME)).first()
        versions = list(model.versions.order_by("number")[:2]) if model is not None else []
        if project is None or len(versions) < 2:
            raise CommandError("Run `manage.py seed_demo` and `manage.py load_demo_registry` first.")
        admin = get_user_model().objects.filter(is_superuser=True).order_by("pk").first()
        deployment = Deployment.objects.filter(name=DEPLOYMENT_NAME).first()
        if deployment is None:
            deployment = deployment_services.deployment_create(
                project=project, name=DEPLOYMENT_NAME, actor=admin, model_version=versions[0], backend="local"
            )
        for spec in DEMO_TESTS:
            existing = ABTest.objects.filter(deployment=deployment, name=spec.name).first()
            if existing is not None and existing.status == "stopped":
                self.stdout.write(f"{spec.name}: already there ({existing.decision}).")
                continue
            if existing is not None:  # an earlier run broke off half way: start that test again
                existing.delete()
            abtest = self._run(deployment, admin, versions, spec)
            self.stdout.write(self.style.SUCCESS(f"{spec.name}: {abtest.decision}, winner v{abtest.winner.number}."))
        deployment.refresh_from_db()
        if deployment.status != DeploymentStatus.STOPPED:
            # No model server for the demo's A/B deployment: it holds the finished tests' history only.
            deployment_services.deployment_stop(deployment=deployment, actor=admin)

    def _run(self, deployment: Deployment, admin: Any, versions: list[Any], spec: DemoTest) -> ABTest:
        control, treatment = versions
        if deployment.status == DeploymentStatus.STOPPED:
            deployment_services.deployment_start(deployment=deployment, actor=admin)
        abtest = services.abtest_create(
            deployment=deployment,
            actor=admin,
            name=spec.name,
            control=control.pk,
            treatments=[treatment.pk],
            split=[50, 50],
            primary_metric=spec.metric,
            mde=spec.mde,
            baseline=spec.baseline,
            guardrails=[{"metric": "error_rate", "margin": 0.01}, {"metric": "p99_latency_ms", "margin": 50}],
            description="Demo: a week of synthetic traffic on the two registry demo versions.",
        )
        services.abtest_start(abtest=abtest, actor=admin)
        start = timezone.now() - timedelta(days=spec.starts_days_ago)
        end = start + timedelta(days=DAYS)
        # The demo's week lies in the past: the test's window is moved there so its readouts read that traffic.
        ABTest.objects.filter(pk=abtest.pk).update(started_at=start)
        abtest.refresh_from_db()
        arms = self._traffic(deployment, abtest, spec, start, end)
        rng = np.random.default_rng(spec.seed + 100)
        if spec.metric == "accuracy":
            labels = [
                {"request_id": request_id, "label": output if rng.random() < spec.rates[arm] else _other(output)}
                for request_id, (arm, output, _) in arms.items()
            ]
            for offset in range(0, len(labels), 5_000):
                prediction_labels_store(actor=admin, project=deployment.project, items=labels[offset : offset + 5_000])
        else:
            outcomes = [
                {"assignment_key": key, "conversion": int(rng.random() < spec.rates[arm])}
                for arm, _, key in arms.values()
            ]
            services.abtest_outcomes_record(abtest=abtest, actor=admin, items=outcomes)
        for day in range(1, DAYS):
            services.abtest_readout_compute(abtest=abtest, actor=None, until=start + timedelta(days=day))
        services.abtest_stop(abtest=abtest, actor=admin)
        ABTest.objects.filter(pk=abtest.pk).update(stopped_at=end)
        ABTestReadout.objects.filter(abtest=abtest, as_of__gt=end).update(as_of=end)
        abtest.refresh_from_db()
        return abtest

    def _traffic(
        self, deployment: Deployment, abtest: ABTest, spec: DemoTest, start: datetime, end: datetime
    ) -> dict[str, tuple[int, str, str]]:
        """One request per unit over the week, routed as the model server routes it: request id -> (arm, output,
        key). Latency and errors differ a little between the arms, within the guardrails."""
        rng = np.random.default_rng(spec.seed)
        arms = list(abtest.arms.order_by("position"))
        split = TrafficSplit(arm.weight for arm in arms)
        source = IngestSource(
            deployment_id=deployment.pk,
            project_id=deployment.project_id,
            version_ids=frozenset(arm.model_version_id for arm in arms),
        )
        units = abtest.planned_sample_size
        seconds = (end - start).total_seconds()
        moments = np.sort(rng.uniform(0, seconds, units))
        routed, events = {}, []
        for index, moment in enumerate(moments):
            key = f"demo-{spec.seed}-user-{index}"
            arm = split.pick(key)
            request_id = f"demo-{spec.seed}-{index}"
            predicted = int(rng.integers(0, len(CLASSES)))
            probabilities = [0.05] * len(CLASSES)
            probabilities[predicted] = 0.9
            failed = rng.random() < 0.002
            events.append(
                {
                    "request_id": request_id,
                    "deployment_id": deployment.pk,
                    "version_id": arms[arm].model_version_id,
                    "outputs": None if failed else [CLASSES[predicted]],
                    "probabilities": None if failed else [probabilities],
                    "latency_ms": float(rng.gamma(4, 2.0 + arm)),
                    "status": 500 if failed else 200,
                    "request_key": key,
                    "timestamp": (start + timedelta(seconds=float(moment))).isoformat(),
                }
            )
            if not failed:
                routed[request_id] = (arm, CLASSES[predicted], key)
        for offset in range(0, len(events), EVENT_BATCH):
            predictions_ingest(source=source, events=events[offset : offset + EVENT_BATCH])
        return routed


def _other(label: str) -> str:
    return CLASSES[(CLASSES.index(label) + 1) % len(CLASSES)]
