from __future__ import annotations

import json
from typing import Any

from django import forms

from apps.core.forms import StyledForm
from apps.core.models import Project

RULES_EXAMPLE = (
    '{"columns": {"age": {"max_null_rate": 0.05, "min": 0, "max": 120, "blocking": true}}, '
    '"target": "label", "max_duplicate_rate": 0.01}'
)


class DatasetCreateForm(StyledForm):
    project = forms.ModelChoiceField(queryset=Project.objects.none(), empty_label=None)
    name = forms.CharField(max_length=100)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    file = forms.FileField(
        required=False, help_text="Optional: the first version, a .csv (UTF-8, with a header) or .parquet file."
    )

    def __init__(self, *args: Any, projects: Any, **kwargs: Any) -> None:
        # StyledForm validates while it styles the widgets, so the choices must be in place before it runs.
        self.base_fields = {**self.base_fields, "project": forms.ModelChoiceField(queryset=projects, empty_label=None)}
        super().__init__(*args, **kwargs)
        self.fields["file"].widget.attrs["accept"] = ".csv,.parquet,.pq"


class DatasetVersionUploadForm(StyledForm):
    file = forms.FileField(help_text="A .csv (UTF-8, comma-separated, with a header row) or .parquet file.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["file"].widget.attrs["accept"] = ".csv,.parquet,.pq"


class DatasetRulesForm(StyledForm):
    rules = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 10, "class": "mono", "spellcheck": "false"}),
        required=False,
        help_text=f"JSON, such as {RULES_EXAMPLE}. Leave empty for no rules.",
    )

    def clean_rules(self) -> dict[str, Any]:
        text = self.cleaned_data["rules"].strip()
        if not text:
            return {}
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
            ) from None
