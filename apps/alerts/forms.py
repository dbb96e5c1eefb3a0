"""The forms of the alerts pages: plain inputs; every check is the service's (a refusal names its field)."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from apps.alerts.choices import AlertComparator, AlertFigure, AlertSeverity
from apps.alerts.models import AlertChannel
from apps.core.notifications.choices import NotificationChannel
from apps.deployments.models import Deployment
from apps.experiments.models import PipelineRun
from apps.registry.models import RegisteredModel


class RuleForm(forms.Form):
    name = forms.CharField(max_length=100)
    deployment = forms.ModelChoiceField(queryset=Deployment.objects.none(), required=False)
    registered_model = forms.ModelChoiceField(
        queryset=RegisteredModel.objects.none(), required=False, label="Or every deployment of model"
    )
    figure = forms.ChoiceField(choices=AlertFigure.choices)
    column = forms.CharField(required=False, help_text="For a column's drift statistic.")
    comparator = forms.ChoiceField(choices=AlertComparator.choices)
    threshold = forms.CharField(help_text="A number; with the box below, an offset from the validation value.")
    threshold_from_validation = forms.BooleanField(required=False, label="Offset from the registered validation value")
    window_seconds = forms.CharField(initial="300", label="Window (s)")
    for_seconds = forms.CharField(initial="0", label="For (s)", help_text="Pending this long before firing.")
    keep_firing_for_seconds = forms.CharField(initial="0", label="Keep firing for (s)")
    repeat_interval_seconds = forms.CharField(initial="14400", label="Repeat interval (s)")
    send_resolved = forms.BooleanField(required=False, initial=True, label="Notify when resolved")
    severity = forms.ChoiceField(choices=AlertSeverity.choices, initial=AlertSeverity.WARNING)
    labels = forms.CharField(required=False, help_text='JSON, e.g. {"team": "ml"}.', initial="{}")
    runbook_url = forms.CharField(required=False, label="Runbook URL")
    channels = forms.ModelMultipleChoiceField(queryset=AlertChannel.objects.none(), required=False)
    enabled = forms.BooleanField(required=False, initial=True)
    retrain_from = forms.ModelChoiceField(
        queryset=PipelineRun.objects.none(), required=False, label="On firing, retrain with the config of pipeline run"
    )
    retrain_cooldown_seconds = forms.CharField(initial="86400", label="Retraining cooldown (s)")
    retrain_open_promotion = forms.BooleanField(required=False, label="Open a promotion request for the new version")
    retrain_abtest_percent = forms.CharField(
        required=False,
        initial="0",
        label="A/B test: the new version's share of the traffic (%)",
        help_text="0: none; 1-99: start an A/B test against the version serving the deployment.",
    )

    def __init__(self, *args: Any, project: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["deployment"].queryset = Deployment.objects.filter(project=project)
        self.fields["registered_model"].queryset = RegisteredModel.objects.filter(project=project)
        self.fields["channels"].queryset = AlertChannel.objects.filter(project=project)
        self.fields["retrain_from"].queryset = PipelineRun.objects.filter(project=project).order_by("-created_at")
        for field in self.fields.values():
            css = (
                "form-check-input" if isinstance(field.widget, forms.CheckboxInput) else "form-control form-control-sm"
            )
            field.widget.attrs.setdefault("class", css)

    def clean_retrain_abtest_percent(self) -> str:
        # Left empty: no A/B test (the service checks the number and names the field).
        return self.cleaned_data["retrain_abtest_percent"] or "0"

    def clean_labels(self) -> dict:
        text = self.cleaned_data["labels"] or "{}"
        try:
            return json.loads(text)
        except ValueError:
            raise forms.ValidationError('Labels are JSON, e.g. {"team": "ml"}.') from None


class ChannelForm(forms.Form):
    name = forms.CharField(max_length=100)
    kind = forms.ChoiceField(choices=NotificationChannel.choices)
    addresses = forms.CharField(required=False, help_text="Email: addresses separated by commas.")
    url = forms.CharField(required=False, label="URL", help_text="Slack incoming webhook or webhook URL.")
    secret = forms.CharField(required=False, help_text="Webhook: the HMAC-SHA256 key (16 characters or more).")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.widget.attrs.setdefault("class", "form-control form-control-sm")


class SilenceForm(forms.Form):
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}))
    hours = forms.IntegerField(min_value=1, max_value=24 * 30, initial=2, label="For (hours)")
    matchers = forms.CharField(required=False, initial="{}", help_text='Label matchers as JSON, e.g. {"team": "ml"}.')

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.widget.attrs.setdefault("class", "form-control form-control-sm")

    def clean_matchers(self) -> dict:
        try:
            return json.loads(self.cleaned_data["matchers"] or "{}")
        except ValueError:
            raise forms.ValidationError('Matchers are JSON, e.g. {"team": "ml"}.') from None
