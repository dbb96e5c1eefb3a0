from __future__ import annotations

import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from apps.core import services
from apps.core.choices import ProjectRole
from apps.core.models import Project

DEMO_PROJECT = "Demo"
DEMO_USERS = [("alice", ProjectRole.EDITOR), ("bob", ProjectRole.APPROVER), ("carol", ProjectRole.VIEWER)]


class Command(BaseCommand):
    help = "Create the demo admin, demo users and the Demo project (idempotent). Prints the password it set."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default=os.environ.get("DEMO_ADMIN_USERNAME", "admin"))

    @transaction.atomic
    def handle(self, *args: Any, username: str, **options: Any) -> None:
        users = get_user_model()
        password = os.environ.get("DEMO_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        admin, created = users.objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True, "email": f"{username}@example.com"}
        )
        admin.set_password(password)
        admin.save()
        project = Project.objects.filter(slug="demo").first() or services.project_create(
            name=DEMO_PROJECT, description="Demo data from the datasets scikit-learn ships.", owner=admin
        )
        for name, role in DEMO_USERS:
            user, _ = users.objects.get_or_create(username=name, defaults={"email": f"{name}@example.com"})
            user.set_password(password)
            user.save()
            services.membership_set(project=project, username=user.username, role=role, actor=admin)
        verb = "Created" if created else "Reset"
        self.stdout.write(
            self.style.SUCCESS(
                f"{verb} demo admin {username!r} with password {password!r} "
                f"(users {', '.join(n for n, _ in DEMO_USERS)} share it)."
            )
        )
