"""A cheap-to-strong cascade against each model alone, on the fake OpenAI server.

Usage (from the repository root)::

    python bench/cascade.py [--images 200] [--cheap-p 0.6] [--strong-p 0.9]
                            [--concurrency 8]

One fake server (``tests/fake_openai.py``) plays two models, chosen by the
request's ``model``: ``fake-cheap`` and ``fake-strong``. Each is the noisy
responder of ``bench/uamc_vs_fixed.py``: every drawn face has a hidden expression,
and one sample names it with the model's probability, another expression
otherwise, so the cheap model's samples disagree more often; its verifier is a
little surer. The probability is the model's mean (``--cheap-p``, ``--strong-p``)
moved by the face's ease (uniform over the faces, shared by both models: easy
faces are easy for both), up to ``--spread`` of the way to 0 or 1 (``p_right``).
The answer's VA is drawn around the named expression's typical VA (``--va-sd``)
and its AUs are the expression's prototype with a few flipped (``--au-flip``),
so that a model's doubt is about the expression. The models are priced
through ``ClientConfig.prices`` like two real ones: the cheap one at $0.15 / $0.60
and the strong one at $2.50 / $10.00 per million input / output tokens, with
tokens counted the way GPT-4o bills them.

Three modes run SV-UAMC (defaults) on the same faces, each on a fresh server so
that the cheap model draws the same samples in every mode:

* cheap only and strong only: one model for every face;
* cascade: ``engine.cascade.run_cascade``, the function a run uses, with the
  default review threshold (0.7): a face the cheap model leaves unsure (held, or
  under the threshold) is annotated again by the strong model, whose answer is kept.

Per mode it prints the cost (what the two models billed), the expression accuracy
against the hidden expressions, the share auto-accepted and the error among those,
and for the cascade the share escalated and each stage's cost and accuracy. It
asserts nothing; the figures are in ``bench/README.md``. These figures show the
mechanics of the cascade, not the accuracy of any real model.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The script is run from a checkout, not an installed package, so the
# repository root is put on the import path before importing SEKE.
sys.path.insert(0, str(REPO))

from bench.uamc_vs_fixed import NoisyResponder, drawn_face  # noqa: E402
from seke_app.engine.cascade import CascadeResult, escalates, run_cascade  # noqa: E402
from seke_app.engine.llm.backend import OpenAIBackend  # noqa: E402
from seke_app.engine.llm.client import ClientConfig, VLLMClient, image_data_url  # noqa: E402
from seke_app.engine.llm.prices import ModelPrice  # noqa: E402
from seke_app.engine.types import AnnotationRequest  # noqa: E402
from seke_app.engine.uamc import UAMCParams, UAMCResult, run_uamc  # noqa: E402
from seke_app.engine.vocab import EXPRESSIONS, Vocabulary  # noqa: E402

CHEAP, STRONG = "fake-cheap", "fake-strong"
PRICES = {CHEAP: ModelPrice.listed(0.15, 0.60), STRONG: ModelPrice.listed(2.50, 10.00)}
VOCABULARY = Vocabulary()


@dataclass(frozen=True)
class Face:
    """A drawn face, its hidden expression and how easy it is (0 hardest, 1 easiest)."""

    name: str
    image: bytes
    truth: str
    ease: float


def p_right(mean: float, spread: float, ease: float) -> float:
    """A model's chance of naming the truth in one sample on a face of this ease: its
    mean, moved by up to ``spread`` of the room to 0 or 1, the same way for both
    models, so that a face hard for one is hard for the other."""
    return mean + spread * (2 * ease - 1) * min(mean, 1 - mean)


@dataclass(frozen=True)
class Outcome:
    """One face in one mode: the deciding result and, for the cascade, both stages."""

    face: Face
    final: UAMCResult
    cascade: CascadeResult | None = None

    def right(self, result: UAMCResult | None = None) -> bool:
        answer = (result or self.final).answer
        return answer is not None and answer.expression == self.face.truth


def faces(n: int, seed: int) -> list[Face]:
    rng = random.Random(seed)
    return [
        Face(f"drawn_{i:04d}", drawn_face(i), rng.choice(EXPRESSIONS), rng.random())
        for i in range(n)
    ]


def _backend(base_url: str, model: str, concurrency: int) -> OpenAIBackend:
    config = ClientConfig(
        base_url=base_url,
        api_key="bench",
        model=model,
        prices=PRICES,
        max_concurrency=concurrency,
    )
    return OpenAIBackend(VLLMClient(config), model=model)


def run_mode(
    mode: str, items: list[Face], args: argparse.Namespace, params: UAMCParams
) -> list[Outcome]:
    # The fake server lives with the tests (it needs pytest), so it is loaded here.
    from tests.fake_openai import FakeOpenAI, by_model

    def model(mean: float) -> NoisyResponder:
        truths = {
            image_data_url(f.image, max_side=512): (f.truth, p_right(mean, args.spread, f.ease))
            for f in items
        }
        return NoisyResponder(truths, va_sd=args.va_sd, au_flip=args.au_flip)

    responder = by_model({CHEAP: model(args.cheap_p), STRONG: model(args.strong_p)})
    with (
        FakeOpenAI(responder=responder) as server,
        _backend(server.base_url, CHEAP, args.concurrency) as cheap,
        _backend(server.base_url, STRONG, args.concurrency) as strong,
    ):

        def one(face: Face) -> Outcome:
            request = AnnotationRequest(face.image, VOCABULARY, image_id=face.name)
            if mode == "cascade":
                both = run_cascade(
                    cheap, strong, request, params, threshold=params.review_threshold
                )
                return Outcome(face, both.final, both)
            return Outcome(face, run_uamc(cheap if mode == CHEAP else strong, request, params))

        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            outcomes = list(pool.map(one, items))
        if server.errors:
            raise SystemExit(f"the fake server failed: {server.errors[0]}")
    return outcomes


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.3f}" if whole else "n/a"


def _accuracy(outcomes: Sequence[Outcome], pick: Callable[[Outcome], UAMCResult | None]) -> str:
    scored = [o for o in outcomes if pick(o) is not None]
    return _share(sum(o.right(pick(o)) for o in scored), len(scored))


def mode_row(label: str, outcomes: list[Outcome], threshold: float) -> str:
    cost = sum(
        o.final.usage.cost_usd if o.cascade is None else o.cascade.usage.cost_usd for o in outcomes
    )
    n = len(outcomes)
    accepted = [o for o in outcomes if not escalates(o.final, threshold)]
    errors = sum(not o.right() for o in accepted)
    escalated = sum(o.cascade is not None and o.cascade.escalated for o in outcomes)
    return (
        f"| {label} | ${cost:.4f} | ${cost / n:.5f} | {_accuracy(outcomes, lambda o: o.final)} "
        f"| {_share(len(accepted), n)} | {_share(errors, len(accepted))} "
        f"| {_share(escalated, n) if label == 'cascade' else '—'} |"
    )


def stage_rows(outcomes: list[Outcome]) -> list[str]:
    cascades = [o.cascade for o in outcomes if o.cascade is not None]
    escalated = [o for o in outcomes if o.cascade is not None and o.cascade.escalated]
    cheap_cost = sum(c.cheap.usage.cost_usd for c in cascades)
    strong_cost = sum(c.strong.usage.cost_usd for c in cascades if c.strong is not None)
    return [
        f"| cheap, every face | {len(cascades)} | ${cheap_cost:.4f} "
        f"| {_accuracy(outcomes, lambda o: o.cascade.cheap if o.cascade else None)} |",
        f"| strong, escalated faces | {len(escalated)} | ${strong_cost:.4f} "
        f"| {_accuracy(escalated, lambda o: o.cascade.strong if o.cascade else None)} |",
        f"| cheap, the same escalated faces | {len(escalated)} | — "
        f"| {_accuracy(escalated, lambda o: o.cascade.cheap if o.cascade else None)} |",
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="drawn faces")
    parser.add_argument("--cheap-p", type=float, default=0.6, help="cheap model's sample accuracy")
    parser.add_argument("--strong-p", type=float, default=0.9, help="strong model's accuracy")
    parser.add_argument(
        "--spread", type=float, default=0.9, help="how much faces differ in ease (0: none)"
    )
    parser.add_argument("--va-sd", type=float, default=0.05, help="VA spread around the prior")
    parser.add_argument("--au-flip", type=float, default=0.02, help="share of AUs flipped")
    parser.add_argument("--concurrency", type=int, default=8, help="faces annotated at once")
    parser.add_argument("--seed", type=int, default=20261206)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    params = UAMCParams()
    items = faces(args.images, args.seed)
    print(
        f"# Cascade on the fake OpenAI server ({len(items)} drawn faces; {CHEAP} right with"
        f" p = {args.cheap_p} per sample at ${PRICES[CHEAP].input} / ${PRICES[CHEAP].output} per 1M"
        f" tokens, {STRONG} with p = {args.strong_p} at ${PRICES[STRONG].input} /"
        f" ${PRICES[STRONG].output}; ease spread {args.spread}, VA sd {args.va_sd}, AUs flipped"
        f" {args.au_flip}; SV-UAMC defaults, review threshold {params.review_threshold})\n"
    )
    print(
        "| mode | cost | cost/face | accuracy | auto-accepted | error among auto-accepted "
        "| escalated |"
    )
    print("|---|---|---|---|---|---|---|")
    results = {}
    for mode, label in ((CHEAP, "cheap only"), (STRONG, "strong only"), ("cascade", "cascade")):
        results[label] = run_mode(mode, items, args, params)
        print(mode_row(label, results[label], params.review_threshold), flush=True)
    print("\n| cascade stage | faces | cost | accuracy |\n|---|---|---|---|")
    print("\n".join(stage_rows(results["cascade"])))


if __name__ == "__main__":
    main()
