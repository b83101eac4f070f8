"""An endpoint's body checked by the page's form, so that the API obeys the page's rules.

Where a page's rules live in a Django form (bounds, choices, the checks of its
``clean``), an endpoint does not restate them: it binds the same form to the
body and answers its errors as a validation error (HTTP 422, each under the
field's name). A field the body leaves out takes the form's initial value, the
value the page shows before anyone types, so that leaving a field out means what
leaving the page's field untouched means.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS
from ninja import Schema
from ninja.errors import ValidationError

AnyForm = TypeVar("AnyForm", bound=forms.BaseForm)

# The name every endpoint gives its body parameter; the API's error messages leave
# it out of a field's location (``seke_app.api.core``).
BODY = "payload"


def bound_form(make: Callable[..., AnyForm], payload: Schema) -> AnyForm:
    """``make(data)`` with the body's values, the form's initial ones for those left out.

    ``make`` builds the form from its data (``make(None)`` the unbound one, whose
    initial values fill in); the body's values go in as JSON values, which Django's
    fields read as they read the page's text (``"0.5"`` and ``0.5`` alike).
    """
    unbound = make(None)
    given = payload.model_dump(mode="json", exclude_unset=True)
    data = {
        name: given[name] if name in given else unbound[name].initial for name in unbound.fields
    }
    return make(data)


def form_invalid(form: forms.BaseForm) -> ValidationError:
    """The form's errors as the API's validation error: HTTP 422, writing nothing.

    Each message is placed under its field's name, as a body that fails the schema
    is; an error of the whole form (its ``clean``) is placed under the body itself.
    """
    errors: list[dict[str, Any]] = []
    for field, messages in form.errors.items():
        loc = ["body", BODY] if field == NON_FIELD_ERRORS else ["body", BODY, field]
        errors.extend({"loc": loc, "msg": message, "type": "form"} for message in messages)
    return ValidationError(errors)


def validated(make: Callable[..., AnyForm], payload: Schema) -> AnyForm:
    """The form bound to the body, valid; ``form_invalid`` raised when it is not."""
    form = bound_form(make, payload)
    if not form.is_valid():
        raise form_invalid(form)
    return form
