"""The create form of an A/B test, with the power calculator's inputs (the same fields)."""

from __future__ import annotations

from typing import Any

from django import forms

from apps.abtests.choices import ABTestMetric, AssignmentKey
from apps.core.forms import StyledForm
from apps.registry.choices import ModelVersionStage


class ABTestForm(StyledForm):
    name = forms.CharField(max_length=100)
    control = forms.TypedChoiceField(coerce=int, help_text="The version serving today.")
    treatments = forms.TypedMultipleChoiceField(coerce=int, help_text="One or more versions to compare with it.")
    split = forms.CharField(
        initial="50,50", help_text="Percent per arm, control first, separated by commas; sums to 100."
    )
    primary_metric = forms.ChoiceField(choices=ABTestMetric.choices)
    baseline = forms.FloatField(help_text="The control's expected rate (0–1) or mean.")
    baseline_sd = forms.FloatField(required=False, label="Standard deviation", help_text="For a mean metric.")
    mde = forms.FloatField(label="Minimum detectable effect", help_text="In the metric's units, e.g. 0.02.")
    mde_relative = forms.BooleanField(required=False, label="The MDE is relative (a share of the baseline)")
    alpha = forms.FloatField(initial=0.05, label="α")
    power = forms.FloatField(initial=0.8)
    sequential = forms.BooleanField(required=False, initial=True, label="Sequential analysis (safe to look daily)")
    planned_sample_size = forms.IntegerField(
        required=False, min_value=2, help_text="Units over all arms; empty: the power calculation's."
    )
    error_rate_margin = forms.FloatField(
        required=False, min_value=0, initial=0.01, label="Guardrail: error rate may rise by at most"
    )
    p99_margin_ms = forms.FloatField(
        required=False, min_value=0, label="Guardrail: p99 latency may rise by at most (ms)"
    )
    assignment_key = forms.ChoiceField(choices=AssignmentKey.choices)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args: Any, versions: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [(v.pk, f"v{v.number}" + (f" ({v.label})" if v.label else "")) for v in versions]
        choices = [c for c, v in zip(choices, versions, strict=True) if v.stage != ModelVersionStage.ARCHIVED]
        self.fields["control"].choices = choices
        self.fields["treatments"].choices = choices

    def clean_split(self) -> list[int]:
        try:
            return [int(part) for part in self.cleaned_data["split"].split(",")]
        except ValueError:
            raise forms.ValidationError("Whole percentages separated by commas, such as 50,50.") from None

    def guardrails(self) -> list[dict[str, Any]]:
        data = self.cleaned_data
        rails = []
        if data.get("error_rate_margin") is not None:
            rails.append({"metric": "error_rate", "margin": data["error_rate_margin"]})
        if data.get("p99_margin_ms") is not None:
            rails.append({"metric": "p99_latency_ms", "margin": data["p99_margin_ms"]})
        return rails
