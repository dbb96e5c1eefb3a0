from __future__ import annotations

from typing import Any

from django import forms

from apps.core.forms import StyledForm
from apps.experiments.pipeline_config import STAGE_GROUPS

EXAMPLE_CONFIG = """experiment_id: exp_001
data_config: {dataset: iris, split: 0.8}
model_config: {algorithm: random_forest, n_estimators: 100}
deployment_config: {strategy: blue_green, replicas: 3}
"""


class ExperimentForm(StyledForm):
    project = forms.ModelChoiceField(queryset=None, to_field_name="slug")
    name = forms.CharField(max_length=100)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)

    def __init__(self, *args: Any, projects: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = projects


class PipelineRunForm(StyledForm):
    project = forms.ModelChoiceField(queryset=None, to_field_name="slug")
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

    def __init__(self, *args: Any, projects: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = projects
