from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from apps.core.choices import ProjectRole
from apps.core.models import Membership, Project
from apps.core.services import normalize_name
from apps.datasets.models import Dataset


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("correct horse battery staple")


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project

    name = factory.Sequence(lambda n: f"Project {n}")
    name_key = factory.LazyAttribute(lambda p: normalize_name(p.name))
    slug = factory.Sequence(lambda n: f"project-{n}")
    description = "A project for tests."


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    project = factory.SubFactory(ProjectFactory)
    user = factory.SubFactory(UserFactory)
    role = ProjectRole.VIEWER


class DatasetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Dataset

    project = factory.SubFactory(ProjectFactory)
    name = factory.Sequence(lambda n: f"dataset-{n}")
    name_key = factory.LazyAttribute(lambda d: normalize_name(d.name))
    description = "A dataset for tests."


class RegisteredModelFactory(factory.django.DjangoModelFactory):
    """A registered model; versions made with ModelVersionFactory have no stored artifact (use the service)."""

    class Meta:
        model = "registry.RegisteredModel"

    project = factory.SubFactory(ProjectFactory)
    name = factory.Sequence(lambda n: f"model-{n}")
    name_key = factory.LazyAttribute(lambda m: normalize_name(m.name))


class ModelVersionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "registry.ModelVersion"

    model = factory.SubFactory(RegisteredModelFactory)
    number = factory.Sequence(lambda n: n + 1)
    sha256 = factory.Sequence(lambda n: f"{n:064x}")
    flavor = "sklearn"
    task = "classification"
    source = "upload"
    signature = factory.LazyFunction(
        lambda: {
            "inputs": [{"name": "x", "type": "number", "nullable": False}],
            "outputs": {"type": "classes", "classes": ["a", "b"]},
        }
    )
