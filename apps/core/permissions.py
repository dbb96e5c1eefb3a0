"""Who may do what in a project. Outsiders get 404 (they must not learn the object exists).

Services that change state call `require_project_role(actor, project, role)` themselves, so the API, the UI,
the CLI, the admin and tasks share one check; views and viewsets only scope what a user can see.
"""

from __future__ import annotations

from apps.core.choices import ProjectRole
from apps.core.exceptions import NotFound, PermissionDenied
from apps.core.models import Membership, Project


def project_role(user: object, project: Project) -> str | None:
    """The user's role in the project; staff act as owners everywhere."""
    if not getattr(user, "is_authenticated", False):
        return None
    if user.is_staff:
        return ProjectRole.OWNER
    membership = Membership.objects.filter(project=project, user=user).only("role").first()
    return membership.role if membership else None


def require_project_role(user: object, project: Project, role: str) -> str:
    """Raise 404 for outsiders and 403 for members below `role`; return the user's role."""
    actual = project_role(user, project)
    if actual is None:
        raise NotFound("No such project.")
    if ProjectRole.rank(actual) < ProjectRole.rank(role):
        raise PermissionDenied(f"This needs the {role} role in project {project.slug!r}; you are {actual}.")
    return actual


def has_project_role(user: object, project: Project, role: str) -> bool:
    actual = project_role(user, project)
    return actual is not None and ProjectRole.rank(actual) >= ProjectRole.rank(role)
