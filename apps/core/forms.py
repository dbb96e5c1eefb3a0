from __future__ import annotations

from typing import Any

from django import forms

from apps.core.choices import ProjectRole


class StyledForm(forms.Form):
    """Gives every widget the design's CSS classes, so templates render fields with `{{ field }}`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            widget = field.widget
            if isinstance(widget, forms.CheckboxInput):
                css = "form-check-input"
            elif isinstance(widget, forms.Select):
                css = "form-select form-select-sm"
            else:
                css = "form-control form-control-sm"
            widget.attrs["class"] = f"{widget.attrs.get('class', '')} {css}".strip()


class ProjectForm(StyledForm):
    name = forms.CharField(max_length=100)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)


class RetentionForm(StyledForm):
    prediction_log_retention_days = forms.IntegerField(min_value=1, label="Raw prediction rows (days)")
    prediction_rollup_retention_days = forms.IntegerField(min_value=1, label="Per-minute rollups (days)")


class MembershipForm(StyledForm):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=ProjectRole.choices)


class APITokenForm(StyledForm):
    name = forms.CharField(max_length=100, help_text="What the token is for, such as 'CI pipeline'.")
