from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from worker.deployments.local import LocalProcessBackend


class Command(BaseCommand):
    help = (
        "Stop every local model server process (they outlive the console on purpose). Deployments keep their "
        "desired state: the reconciler starts them again on its next run."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        stopped = LocalProcessBackend(state_dir=settings.DEPLOYMENTS_STATE_DIR).stop_all()
        self.stdout.write(self.style.SUCCESS(f"Stopped the model servers of {len(stopped)} deployment(s)."))
