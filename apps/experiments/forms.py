from __future__ import annotations

from typing import Any

from django import forms

from apps.core.forms import StyledForm
from apps.core.models import Project
from apps.experiments.pipeline_config import STAGE_GROUPS

EXAMPLE_CONFIG = """experiment_id: exp_001
data_config: {dataset: iris, split: 0.8}
model_config: {algorithm: random_forest, n_estimators: 100}
deployment_config: {strategy: blue_green, replicas: 3}
"""


class ProjectScopedForm(StyledForm):
    """A form whose `project` must be one of `projects` (those the user may edit).

    StyledForm validates while styling, inside __init__, so the allowed projects are known before that
    and checked in `clean_project`; the field's own queryset only narrows what the select offers.
    """

    project = forms.ModelChoiceField(queryset=Project.objects.all(), to_field_name="slug", empty_label=None)

    def __init__(self, *args: Any, projects: Any, **kwargs: Any) -> None:
        self.projects = projects
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = projects

    def clean_project(self) -> Project:
        project = self.cleaned_data["project"]
        if not self.projects.filter(pk=project.pk).exists():
            raise forms.ValidationError("Choose a project in which you have the editor role.")
        return project


class ExperimentForm(ProjectScopedForm):
    name = forms.CharField(max_length=100)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)


class PipelineRunForm(ProjectScopedForm):
    config_yaml = forms.CharField(
        label="Pipeline config (YAML)",
        initial=EXAMPLE_CONFIG,
        widget=forms.Textarea(attrs={"rows": 9, "class": "mono", "spellcheck": "false"}),
        help_text="See docs/experiments.md for every key; `search:` under model_config runs an Optuna study.",
    )
    stage = forms.ChoiceField(
        choices=[("", "all stages")] + [(name, name) for name in STAGE_GROUPS if name != "all"],
        required=False,
        help_text="Run only up to this stage.",
    )
