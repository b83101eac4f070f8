"""The form that registers a webhook (the page's and the API's rules)."""

from __future__ import annotations

from django import forms
from django.contrib.auth.models import AbstractBaseUser

from seke_app.models.webhooks import SUBSCRIBABLE, URL_MAX_LENGTH, Webhook, url_problem
from seke_app.webhooks.services import webhook_create


class WebhookForm(forms.Form):
    url = forms.CharField(
        label="URL",
        max_length=URL_MAX_LENGTH,
        # A text field rather than the browser's URL field: SEKE says itself what
        # it refuses, and the browser would let ftp:// through anyway.
        widget=forms.TextInput(attrs={"placeholder": "https://example.org/seke-events"}),
        help_text="Where SEKE POSTs each event, signed: an http:// or https:// URL.",
    )
    description = forms.CharField(
        required=False,
        max_length=200,
        help_text="What receives the events, in a few words (optional).",
    )
    events = forms.MultipleChoiceField(
        choices=SUBSCRIBABLE,
        widget=forms.CheckboxSelectMultiple,
        help_text="The events this URL is told about.",
    )

    def clean_url(self) -> str:
        url = str(self.cleaned_data["url"]).strip()
        problem = url_problem(url)
        if problem:
            raise forms.ValidationError(problem)
        return url

    def create(self, *, user: AbstractBaseUser | None) -> Webhook:
        """The webhook, made by the service the API also calls (call once valid)."""
        return webhook_create(
            url=self.cleaned_data["url"],
            events=self.cleaned_data["events"],
            description=self.cleaned_data["description"],
            user=user,
        )
