"""The rows a run writes for one image: an ``Annotation`` and its samples.

One SV-UAMC result gives one annotation (``annotation_fields``) and one sample row
per sample and verification reply (``sample_rows``). A cascade's image
(``engine.cascade``) gives the deciding stage's annotation with the cheap stage
kept beside it (``cascade_fields``), and both stages' samples, marked by stage and
numbered on (``cascade_sample_rows``), so that each stage's cost stays exact.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from seke_app.engine.cascade import CHEAP, STRONG, CascadeResult
from seke_app.engine.uamc import UAMCResult
from seke_app.models import Annotation, AnnotationSample


def money(value: float) -> Decimal:
    """A cost as stored: to the micro-dollar."""
    return Decimal(str(round(value, 6)))


def annotation_fields(result: UAMCResult) -> dict[str, Any]:
    """The Annotation columns for one SV-UAMC result."""
    stored = result.to_json()
    answer = result.answer
    uncertainty = stored["uncertainty"]
    consistency = result.consistency
    return {
        "expression": answer.expression if answer else None,
        "expression_votes": uncertainty["expression"]["votes"],
        "expression_uncertainty": {
            k: v for k, v in uncertainty["expression"].items() if k != "votes"
        },
        "expression_confidence": result.confidence.expression,
        "valence": answer.valence if answer else None,
        "arousal": answer.arousal if answer else None,
        "va_samples": [
            list(pair)
            for pair in zip(
                uncertainty["va"]["valence"]["values"],
                uncertainty["va"]["arousal"]["values"],
                strict=True,
            )
        ],
        "va_uncertainty": {
            axis: {k: v for k, v in uncertainty["va"][axis].items() if k != "values"}
            for axis in ("valence", "arousal")
        }
        | {"unsure": uncertainty["va"]["unsure"]},
        "va_confidence": result.confidence.va,
        "aus": {str(au): on for au, on in sorted(answer.aus.items())} if answer else {},
        "au_intensity": {str(au): i for au, i in answer.au_intensity.items()} if answer else {},
        "au_rates": uncertainty["aus"]["rates"],
        "au_uncertainty": {k: v for k, v in uncertainty["aus"].items() if k != "rates"},
        "au_confidence": result.confidence.aus,
        "evidence": dict(answer.evidence) if answer else {},
        "consistency": consistency.score if consistency else None,
        "consistency_reasons": list(consistency.reasons) if consistency else [],
        "verification": stored["verification"] or {},
        "confidence": result.overall_confidence,
        "flagged": result.flagged,
        "flag_reasons": result.flag_reasons,
        "held": result.held,
        "known_grains": list(result.given_grains),
        "provenance": result.roles.provenance,
        "inferred_from": dict(result.roles.inferred_from),
        "n_samples": result.n_samples,
        "n_valid": result.n_valid,
        "requests": result.usage.requests,
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "cost_usd": money(result.usage.cost_usd),
    }


def sample_rows(
    annotation: Annotation, result: UAMCResult, *, stage: str = "", start: int = 0
) -> list[AnnotationSample]:
    return [
        AnnotationSample(
            annotation=annotation,
            index=index,
            kind=sample.kind,
            stage=stage,
            raw_text=sample.raw,
            parsed=sample.answer.to_json() if sample.answer else None,
            parse_error=sample.error or "",
            verdict=sample.verdict,
            prompt_tokens=sample.usage.prompt_tokens,
            completion_tokens=sample.usage.completion_tokens,
            cost_usd=money(sample.usage.cost_usd),
        )
        for index, sample in enumerate(result.samples, start=start)
    ]


def cascade_fields(result: CascadeResult) -> dict[str, Any]:
    """The Annotation columns for a cascade's image: the deciding stage's result, the
    cheap stage's confidence and answer, and both stages' usage."""
    cheap = result.cheap
    fields = annotation_fields(result.final)
    usage = result.usage
    fields |= {
        "stage": result.stage,
        "cheap_confidence": cheap.overall_confidence,
        "cheap_result": cheap_record(cheap) if result.escalated else {},
        "requests": usage.requests,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost_usd": money(usage.cost_usd),
    }
    return fields


def cheap_record(result: UAMCResult) -> dict[str, Any]:
    """What an escalated image keeps of the cheap stage: its answer, verdict and usage."""
    answer = result.answer
    return {
        "expression": answer.expression if answer else None,
        "valence": answer.valence if answer else None,
        "arousal": answer.arousal if answer else None,
        "aus": {str(au): on for au, on in sorted(answer.aus.items())} if answer else {},
        "confidence": result.overall_confidence,
        "held": result.held,
        "flag_reasons": result.flag_reasons,
        "n_samples": result.n_samples,
        "n_valid": result.n_valid,
        "requests": result.usage.requests,
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "cost_usd": str(money(result.usage.cost_usd)),
    }


def cascade_sample_rows(annotation: Annotation, result: CascadeResult) -> list[AnnotationSample]:
    """Both stages' samples: the cheap model's first, then the strong model's."""
    rows = sample_rows(annotation, result.cheap, stage=CHEAP)
    if result.strong is not None:
        rows += sample_rows(annotation, result.strong, stage=STRONG, start=len(rows))
    return rows
