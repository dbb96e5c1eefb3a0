from __future__ import annotations

from django import forms

from apps.core.forms import StyledForm
from apps.deployments.choices import DeploymentStrategy


class ScaleForm(forms.Form):
    generation = forms.IntegerField(widget=forms.HiddenInput)
    replicas = forms.IntegerField(min_value=1)


class GenerationForm(forms.Form):
    generation = forms.IntegerField(widget=forms.HiddenInput)


class RolloutForm(StyledForm):
    generation = forms.IntegerField(widget=forms.HiddenInput)
    model_version = forms.TypedChoiceField(coerce=int, label="Version")
    strategy = forms.ChoiceField(choices=DeploymentStrategy.choices, initial=DeploymentStrategy.BLUE_GREEN)
    traffic_percentage = forms.IntegerField(
        required=False, min_value=1, max_value=99, label="Canary start %", help_text="Canary only."
    )

    def __init__(self, *args: object, versions: list[tuple[int, str]], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model_version"].choices = versions


class TryItForm(StyledForm):
    body = forms.CharField(widget=forms.Textarea(attrs={"rows": 6, "class": "font-monospace"}), label="Request (JSON)")
    protocol = forms.ChoiceField(choices=[("mlflow", "MLflow /invocations"), ("v2", "KServe V2 infer")])
