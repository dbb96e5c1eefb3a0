from __future__ import annotations

import json
from typing import Any

from django import forms

from apps.core.forms import StyledForm
from apps.core.models import Project
from apps.registry.choices import ModelVersionStage, RegistryEventType, WebhookKind

SIGNATURE_EXAMPLE = (
    '{"inputs": [{"name": "sepal_length", "type": "number"}], '
    '"outputs": {"type": "classes", "classes": ["setosa", "versicolor"]}}'
)


def _json_field(value: str, *, kind: type, what: str) -> Any:
    text = (value or "").strip()
    if not text:
        return None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise forms.ValidationError(f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from None
    if not isinstance(parsed, kind):
        raise forms.ValidationError(f"The {what} must be a JSON {'object' if kind is dict else 'list'}.")
    return parsed


class ModelUploadForm(StyledForm):
    project = forms.ModelChoiceField(queryset=Project.objects.none(), empty_label=None)
    model_name = forms.CharField(max_length=100, help_text="A new name creates the model.")
    file = forms.FileField(help_text="A model bundle zip, a skops file or an XGBoost .ubj/.json model.")
    signature = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "class": "mono", "spellcheck": "false"}),
        help_text=f"JSON; needed for a bare model file, e.g. {SIGNATURE_EXAMPLE}",
    )
    label = forms.CharField(required=False, max_length=64, help_text="Optional, such as v1.0.0.")

    def __init__(self, *args: Any, projects: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = projects
        # StyledForm reads self.errors while styling, i.e. validates before the queryset above was set.
        self._errors = None
        self.fields["file"].widget.attrs["accept"] = ".zip,.skops,.ubj,.json"

    def clean_signature(self) -> dict | None:
        return _json_field(self.cleaned_data.get("signature", ""), kind=dict, what="signature")


class PromotionRequestForm(StyledForm):
    target_stage = forms.ChoiceField(
        required=False,
        choices=[("", "— an alias instead —"), *[(v, label) for v, label in ModelVersionStage.choices]],
        label="Move to stage",
    )
    target_alias = forms.CharField(
        required=False, max_length=40, label="…or point alias", help_text="champion, challenger, or your own name."
    )
    comment = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}), help_text="Why?")

    def __init__(self, *args: Any, current_stage: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [c for c in self.fields["target_stage"].choices if c[0] != current_stage]
        self.fields["target_stage"].choices = choices
        if not self.is_bound:
            self.initial.setdefault(
                "target_stage", ModelVersionStage.PRODUCTION if current_stage != "production" else ""
            )


class DecisionForm(StyledForm):
    comment = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    override_reason = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Owners only, when a gate check failed: why approve anyway. It is recorded.",
    )


class SecretURLInput(forms.URLInput):
    """Never renders the value back: a form shown again after an error must not echo a Slack URL (a secret)."""

    def format_value(self, value: Any) -> None:
        return None


class WebhookForm(StyledForm):
    """A webhook or Slack subscription of a project's registry events (owners)."""

    project = forms.ModelChoiceField(queryset=Project.objects.none(), empty_label=None)
    kind = forms.ChoiceField(choices=WebhookKind.choices)
    url = forms.URLField(
        max_length=500,
        assume_scheme="https",
        widget=SecretURLInput,
        help_text="For Slack, the incoming webhook URL (https://hooks.slack.com/services/…); it is kept secret.",
    )
    event_types = forms.MultipleChoiceField(
        choices=RegistryEventType.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every event.",
    )

    def __init__(self, *args: Any, projects: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = projects
