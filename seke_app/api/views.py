"""The account page: a user's API tokens, made (and shown once) and revoked."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from seke_app.api.tokens import TokenRefused, token_create, token_revoke
from seke_app.models import ApiToken
from seke_app.roles import request_user


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=100, help_text="What the token is for, e.g. “training notebook”."
    )


@login_required
def account(request: HttpRequest) -> HttpResponse:
    user = request_user(request)
    form = TokenForm(request.POST or None)
    secret = None
    if request.method == "POST" and form.is_valid():
        try:
            made = token_create(user=user, name=form.cleaned_data["name"])
        except TokenRefused as exc:
            form.add_error("name", str(exc))
        else:
            secret = made.secret
            form = TokenForm()
    tokens = ApiToken.objects.filter(user=user)
    return render(
        request,
        "account/account.html",
        {"form": form, "tokens": tokens, "secret": secret},
        status=422 if form.errors else 200,
    )


@login_required
@require_POST
def token_revoke_view(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=pk, user=request_user(request))
    token_revoke(token=token)
    messages.success(request, f"Token “{token.name}” ({token.prefix}…) is revoked.")
    return redirect("account")
