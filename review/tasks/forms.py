"""Parsing a review decision from the review page's form."""

from __future__ import annotations

from django.http import QueryDict

from review.tasks.services import Decision


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
