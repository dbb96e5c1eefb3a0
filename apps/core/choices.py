from __future__ import annotations

from django.db import models


class ProjectRole(models.TextChoices):
    """A user's role in one project. Each role can do everything the roles before it can."""

    VIEWER = "viewer", "Viewer"
    EDITOR = "editor", "Editor"
    APPROVER = "approver", "Approver"
    OWNER = "owner", "Owner"

    @classmethod
    def rank(cls, role: str) -> int:
        return [choice.value for choice in cls].index(role)

    @classmethod
    def colour(cls, role: str) -> str:
        return {"viewer": "secondary", "editor": "primary", "approver": "warning", "owner": "success"}[role]


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"

    @classmethod
    def colour(cls, status: str) -> str:
        return {
            "queued": "secondary",
            "running": "info",
            "succeeded": "success",
            "failed": "danger",
            "cancelled": "dark",
        }[status]
