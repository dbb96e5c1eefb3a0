from __future__ import annotations

from django import forms

from apps.core.choices import ProjectRole


class ProjectForm(forms.Form):
    name = forms.CharField(max_length=100)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)


class MembershipForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=ProjectRole.choices)


class APITokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, such as 'CI pipeline'.")
