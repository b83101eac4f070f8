"""Label Studio JSON tasks for SEKE's three grains, and reading them back.

The labeling interface (``label_config``): the image; a single ``Choices`` named
``expression``; two ``Number`` fields ``valence`` and ``arousal`` in [-1, 1]; a
multiple ``Choices`` named ``aus`` with one choice per coded AU (``AU12``).

A task is ``{"data": {"image", "seke_image", "name"}, "annotations": [...],
"predictions": [...]}`` as Label Studio imports it. Human grains (SEKE reviewers
and imported dataset labels) go into one annotation; machine grains into one
prediction with the model and prompt version as ``model_version`` and the
lowest machine grain confidence as ``score``.

Reading back takes, per task, the latest annotation that was not cancelled
(Label Studio's ``was_cancelled``), merged over the grains it sets; predictions
are not read back, since they are not human labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

from seke_app.engine.formats.records import CuratedRecord, au_key, round_va
from seke_app.engine.vocab import AU_NAMES, EXPRESSIONS

FROM_EXPRESSION, FROM_VALENCE, FROM_AROUSAL, FROM_AUS = "expression", "valence", "arousal", "aus"
TO_NAME = "image"


def label_config(aus: Sequence[int], expressions: Sequence[str] = EXPRESSIONS) -> str:
    """The Label Studio labeling interface XML for these labels."""
    expression_choices = "\n".join(f"    <Choice value={quoteattr(e)}/>" for e in expressions)
    au_choices = "\n".join(
        f"    <Choice value={quoteattr(au_key(au))} hint={quoteattr(AU_NAMES.get(au, ''))}/>"
        for au in aus
    )
    return f"""<View>
  <Image name="{TO_NAME}" value="$image"/>
  <Header value="Expression"/>
  <Choices name="{FROM_EXPRESSION}" toName="{TO_NAME}" choice="single" showInline="true">
{expression_choices}
  </Choices>
  <Header value="Valence (-1 unpleasant … 1 pleasant)"/>
  <Number name="{FROM_VALENCE}" toName="{TO_NAME}" min="-1" max="1" step="0.001"/>
  <Header value="Arousal (-1 calm … 1 excited)"/>
  <Number name="{FROM_AROUSAL}" toName="{TO_NAME}" min="-1" max="1" step="0.001"/>
  <Header value="Active action units"/>
  <Choices name="{FROM_AUS}" toName="{TO_NAME}" choice="multiple" showInline="true">
{au_choices}
  </Choices>
</View>
"""


def _item(
    record: CuratedRecord, from_name: str, kind: str, value: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": f"{record.image[:8]}-{from_name}",
        "from_name": from_name,
        "to_name": TO_NAME,
        "type": kind,
        "value": value,
    }


def _results(record: CuratedRecord, grains: Iterable[str]) -> list[dict[str, Any]]:
    results = []
    for grain in grains:
        if grain == "expression":
            results.append(
                _item(record, FROM_EXPRESSION, "choices", {"choices": [record.expression]})
            )
        elif grain == "va":
            assert record.valence is not None and record.arousal is not None
            results.append(
                _item(record, FROM_VALENCE, "number", {"number": round_va(record.valence)})
            )
            results.append(
                _item(record, FROM_AROUSAL, "number", {"number": round_va(record.arousal)})
            )
        elif grain == "aus":
            active = [au_key(au) for au in record.active_aus()]
            results.append(_item(record, FROM_AUS, "choices", {"choices": active}))
    return results


def _model_version(record: CuratedRecord, grains: Sequence[str]) -> tuple[str, float | None]:
    provenances = [record.provenance[g] for g in grains]
    versions = sorted(
        {f"{p.model} prompt v{p.prompt_version}" for p in provenances if p.model is not None}
    )
    confidences = [p.confidence for p in provenances if p.confidence is not None]
    return ", ".join(versions) or "seke", min(confidences) if confidences else None


def task(record: CuratedRecord, image_url: str) -> dict[str, Any]:
    """One Label Studio task holding the record's labels."""
    human = [g for g in record.grains() if record.provenance[g].source != "machine"]
    machine = [g for g in record.grains() if record.provenance[g].source == "machine"]
    entry: dict[str, Any] = {
        "data": {
            "image": image_url,
            "seke_image": record.image,
            "name": record.name,
            "provenance": {g: record.provenance[g].source for g in record.grains()},
        },
        "annotations": [],
        "predictions": [],
    }
    if record.aus is not None:
        # Which AUs were coded at all, so that reading back keeps "absent" apart from
        # "not coded" (a multiple choice lists only the chosen ones).
        entry["data"]["aus_coded"] = [au_key(au) for au in sorted(record.aus)]
    if human:
        entry["annotations"].append({"result": _results(record, human), "ground_truth": False})
    if machine:
        model_version, score = _model_version(record, machine)
        prediction: dict[str, Any] = {
            "model_version": model_version,
            "result": _results(record, machine),
        }
        if score is not None:
            prediction["score"] = score
        entry["predictions"].append(prediction)
    return entry


@dataclass
class ImportedLabels:
    """The human labels of one Label Studio task, any grain possibly missing."""

    image: str | None
    name: str
    image_url: str
    expression: str | None = None
    valence: float | None = None
    arousal: float | None = None
    aus: dict[int, bool] | None = None
    annotator: str = ""
    problems: list[str] = field(default_factory=list)

    def grains(self) -> tuple[str, ...]:
        found = []
        if self.expression is not None:
            found.append("expression")
        if self.valence is not None and self.arousal is not None:
            found.append("va")
        if self.aus is not None:
            found.append("aus")
        return tuple(found)


def _annotator(annotation: Mapping[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        return str(who.get("email") or who.get("id") or "")
    return "" if who is None else str(who)


def _coded_aus(data: Mapping[str, Any], aus: Sequence[int]) -> list[int]:
    coded = data.get("aus_coded")
    if not isinstance(coded, list):
        return list(aus)
    numbers = [int(str(c).upper().removeprefix("AU")) for c in coded if str(c)[2:].isdigit()]
    return [au for au in numbers if au in aus] or list(aus)


def _apply_result(
    labels: ImportedLabels, item: Mapping[str, Any], aus: Sequence[int], expressions: Sequence[str]
) -> None:
    name, value = item.get("from_name"), item.get("value") or {}
    if name == FROM_EXPRESSION:
        choices = value.get("choices") or []
        if len(choices) == 1 and str(choices[0]).lower() in expressions:
            labels.expression = str(choices[0]).lower()
        else:
            labels.problems.append(f"expression {choices!r} is not one of the expressions")
    elif name in (FROM_VALENCE, FROM_AROUSAL):
        number = value.get("number", value.get("rating"))
        if isinstance(number, int | float) and not isinstance(number, bool) and -1 <= number <= 1:
            setattr(labels, str(name), float(number))
        else:
            labels.problems.append(f"{name} {number!r} is not a number in [-1, 1]")
    elif name == FROM_AUS:
        chosen = {str(c).upper() for c in value.get("choices") or []}
        unknown = chosen - {au_key(au) for au in aus}
        if unknown:
            labels.problems.append(f"unknown AUs {', '.join(sorted(unknown))}")
        labels.aus = {au: au_key(au) in chosen for au in aus}


def labels_from_task(
    entry: Mapping[str, Any], aus: Sequence[int], expressions: Sequence[str] = EXPRESSIONS
) -> ImportedLabels:
    """The latest non-cancelled annotation of a task as SEKE labels."""
    data = entry.get("data") or {}
    url = str(data.get("image") or "")
    labels = ImportedLabels(
        image=str(data["seke_image"]) if data.get("seke_image") else None,
        name=str(data.get("name") or url.rsplit("/", 1)[-1].split("?")[0]),
        image_url=url,
    )
    annotations = [a for a in entry.get("annotations") or [] if not a.get("was_cancelled")]
    if not annotations:
        return labels
    # Label Studio writes ISO 8601 times; those sort as text. Without times, the last wins.
    latest = max(enumerate(annotations), key=lambda p: (str(p[1].get("created_at") or ""), p[0]))[1]
    labels.annotator = _annotator(latest)
    coded = _coded_aus(data, aus)
    for item in latest.get("result") or []:
        _apply_result(labels, item, coded, expressions)
    return labels
