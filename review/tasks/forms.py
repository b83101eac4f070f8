"""Parsing a review decision from the review page's form."""

from __future__ import annotations

from django.http import QueryDict

from review.models import ReviewDecision
from review.tasks.services import Decision, unchanged_grains
from seke_app.models import Annotation


class DecisionFormError(ValueError):
    pass


def _float(data: QueryDict, name: str) -> float | None:
    value = data.get(name, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise DecisionFormError(f"{name} {value!r} is not a number") from None


def decision_from_post(data: QueryDict, au_vocabulary: tuple[int, ...]) -> Decision:
    """A Decision from POSTed fields: action, expression, valence, arousal, au_N, au_N_intensity.

    AU checkboxes are sent for the AUs that are on; every AU of the vocabulary that
    is not sent is off. Unknown ``au_N`` names are kept so that validation reports them.
    """
    aus: dict[int, bool] = {au: False for au in au_vocabulary}
    intensity: dict[int, str] = {}
    for key in data:
        value = data.get(key, "")
        if not key.startswith("au_"):
            continue
        name, _, suffix = key[3:].partition("_")
        if not name.isdigit():
            raise DecisionFormError(f"{key} is not an AU field")
        if suffix == "intensity":
            if value:
                intensity[int(name)] = value
        elif value in ("on", "1", "true"):
            aus[int(name)] = True
    try:
        spent = int(data.get("time_spent_ms", "0") or 0)
    except ValueError:
        raise DecisionFormError("time_spent_ms is not a whole number") from None
    return Decision(
        action=data.get("action", ""),
        expression=data.get("expression") or None,
        valence=_float(data, "valence"),
        arousal=_float(data, "arousal"),
        aus=aus,
        au_intensity={a: i for a, i in intensity.items() if aus.get(a)},
        note=data.get("note", ""),
        reject_reason=data.get("reject_reason", ""),
        time_spent_ms=spent,
    )


def va_confirmation_problem(
    decision: Decision, annotation: Annotation, data: QueryDict
) -> str | None:
    """Why a correction cannot be taken as posted, or None.

    A reviewer who changes the expression and leaves valence and arousal as the
    machine gave them, for the machine's expression, has most likely not looked at
    them ("happiness" with valence -0.25). Such a correction is taken once the
    reviewer confirms them (``va_confirmed``); the page offers the new expression's
    typical values instead.
    """
    if decision.action != ReviewDecision.Action.CORRECT or decision.expression is None:
        return None
    if annotation.valence is None or data.get("va_confirmed") in ("1", "on"):
        return None
    same = unchanged_grains(decision, annotation)
    if "expression" in same or "va" not in same:
        return None
    return (
        f"Valence and arousal are still the machine's, given for "
        f"{annotation.expression or 'no expression'}: set them for {decision.expression}, "
        "take its typical values (T), or keep them (C)"
    )
