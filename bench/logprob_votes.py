"""Soft votes from token log-probabilities against whole votes, on the fake server.

Usage (from the repository root)::

    python bench/logprob_votes.py [--images 200] [--jitter 0.3] [--commit 0]
                                  [--seed 20261206] [--k0 3] [--va-sem-threshold 0.15]

It starts the project's fake OpenAI server (``tests/fake_openai.py``) in-process
and runs SV-UAMC (``run_uamc`` through ``OpenAIBackend`` on a ``VLLMClient``,
default parameters but for ``--k0`` and ``--va-sem-threshold``) on synthetic
images twice: with log-probabilities asked for (each sample's expression counts
as a soft vote, the stopping rule reads the spread of the samples' margins, the
verification is graded by its probability) and with ``top_logprobs=0`` (whole
votes, as before). Both passes see the same draws.

The fake plays a model with a known distribution. Every image has a hidden true
expression, a confusable expression and a chance ``p`` (Beta(5, 1.5), clipped to
[0.3, 0.98]) that the model favours the truth: its distribution over the
vocabulary puts ``p`` on the truth, ``1 - p - 0.02`` on the confusable class and
0.02 over the rest. Each choice perturbs that distribution's log-probabilities by
Gaussian noise (``--jitter``, as the evidence written before the expression would)
and, with ``--commit c``, moves the share ``c`` of it onto one class drawn from it
(the class the sample's reasoning settled on); it draws its expression from the
result, and its log-probabilities at the expression value are exactly that
distribution, so the model is calibrated by construction. The commitment keeps
the draws' distribution and only changes how much a sample's probabilities depend
on its own reasoning: at 0 hardly at all (every soft vote is close to the image's
distribution), towards 1 as much as a whole vote. The verifier answers the most
likely expression of its own perturbed (never committed) distribution and
confirms or revises the aggregate's accordingly. VA and AUs are the named class's
typical values, identical across samples of one class, so that only the
expression's draws spread them.

It prints, for both passes: mean samples per image (the verification counts),
the ratio of the two, expression accuracy against the hidden truth, the share
flagged for review, the error rate among the unflagged, and the AUROC of the
expression confidence for right versus wrong. It asserts nothing; the figures
describe this synthetic model, not a real one.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# The script is run from a checkout, not an installed package, so the
# repository root is put on the import path before importing SEKE.
sys.path.insert(0, str(REPO))

from seke_app.engine.evaluate import EvalItem, EvalReport, evaluate  # noqa: E402
from seke_app.engine.knowledge import PROTOTYPES, VA_PRIORS  # noqa: E402
from seke_app.engine.llm.backend import OpenAIBackend  # noqa: E402
from seke_app.engine.llm.client import ClientConfig, VLLMClient, image_data_url  # noqa: E402
from seke_app.engine.schema import answer_to_schema_json  # noqa: E402
from seke_app.engine.types import Answer  # noqa: E402
from seke_app.engine.uamc import UAMCParams  # noqa: E402
from seke_app.engine.vocab import EXPRESSIONS, Vocabulary  # noqa: E402

VOCABULARY = Vocabulary()
# Pairs a model confuses, after the usual confusions of facial-expression data.
CONFUSABLE = {
    "neutral": "sadness",
    "happiness": "contempt",
    "sadness": "neutral",
    "surprise": "fear",
    "fear": "surprise",
    "disgust": "anger",
    "anger": "disgust",
    "contempt": "neutral",
}
REST_MASS = 0.02


def synthetic_image(seed: int) -> bytes:
    """A small image unique to ``seed`` (the fake recognises images by their bytes)."""
    rng = random.Random(seed)
    image = Image.new("RGB", (32, 32), (rng.randrange(256), rng.randrange(256), seed % 256))
    image.putpixel((seed % 32, (seed // 32) % 32), (seed % 251, 7, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def model_distribution(truth: str, p: float) -> dict[str, float]:
    confusable = CONFUSABLE[truth]
    rest = [e for e in EXPRESSIONS if e not in (truth, confusable)]
    probs = {e: REST_MASS / len(rest) for e in rest}
    probs[truth] = p
    probs[confusable] = 1.0 - p - REST_MASS
    return probs


class SyntheticModel:
    """The fake's responder and its log-probabilities at the expression value."""

    def __init__(
        self, images: dict[str, tuple[str, float]], jitter: float, seed: int, commit: float = 0.0
    ) -> None:
        self.images = images
        self.jitter = jitter
        self.commit = commit
        self.seed = seed
        self._calls: dict[tuple[str, str], int] = {}
        self._drawn: dict[tuple[int, int], dict[str, float]] = {}
        self._lock = threading.Lock()

    def respond(self, body: dict[str, Any], index: int) -> str:
        url = image_url(body)
        truth, p = self.images[url]
        schema = body["response_format"]["json_schema"]["name"]
        with self._lock:
            key = (url, schema)
            call = self._calls.get(key, 0) + (index == 0)
            self._calls[key] = call
        rng = random.Random(f"{self.seed}:{url[-48:]}:{schema}:{call}:{index}")
        probs = self._perturbed(model_distribution(truth, p), rng)
        if schema != "seke_verification" and self.commit > 0:
            probs = self._committed(probs, rng)
        with self._lock:
            self._drawn[(id(body), index)] = probs
        if schema == "seke_verification":
            own = max(probs, key=lambda e: probs[e])
            shown = shown_expression(body)
            verdict = "confirm" if own == shown else "revise"
            verdicts = {g: {"verdict": "confirm"} for g in ("aus", "va")}
            verdicts["expression"] = {"verdict": verdict}
            answer = answer_to_schema_json(typical_answer(own))
            return json.dumps({"verdicts": verdicts, "answer": answer})
        names = list(probs)
        drawn = rng.choices(names, weights=[probs[e] for e in names])[0]
        return json.dumps(answer_to_schema_json(typical_answer(drawn)))

    def logprobs(self, body: dict[str, Any], index: int) -> dict[str, float] | None:
        with self._lock:
            probs = self._drawn.pop((id(body), index), None)
        return None if probs is None else {e: math.log(q) for e, q in probs.items()}

    def _committed(self, probs: dict[str, float], rng: random.Random) -> dict[str, float]:
        """``commit`` of the mass moved to a class drawn from ``probs``: the reasoning
        settled on it. The draws' marginal stays ``probs``'s."""
        names = list(probs)
        settled = rng.choices(names, weights=[probs[e] for e in names])[0]
        return {e: (1.0 - self.commit) * q + self.commit * (e == settled) for e, q in probs.items()}

    def _perturbed(self, probs: dict[str, float], rng: random.Random) -> dict[str, float]:
        logits = {e: math.log(q) + rng.gauss(0.0, self.jitter) for e, q in probs.items()}
        top = max(logits.values())
        weights = {e: math.exp(v - top) for e, v in logits.items()}
        total = sum(weights.values())
        return {e: w / total for e, w in weights.items()}


def typical_answer(expression: str) -> Answer:
    prior = VA_PRIORS[expression]
    prototype = set(PROTOTYPES[expression])
    aus = {au: au in prototype for au in VOCABULARY.aus}
    evidence = {
        "aus": "The action units typical of the expression.",
        "expression": f"The face looks most like {expression}.",
        "va": "Typical of the expression.",
    }
    return Answer(expression, prior.valence, prior.arousal, aus, {}, evidence)


def image_url(body: dict[str, Any]) -> str:
    for message in body.get("messages") or []:
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if part.get("type") == "image_url":
                return str(part["image_url"]["url"])
    raise ValueError("the request carries no image")


def shown_expression(body: dict[str, Any]) -> str:
    """The aggregate's expression the verification prompt shows."""
    for message in body.get("messages") or []:
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            text = part.get("text") or ""
            if "aggregated into this answer:" in text:
                start = text.index("{", text.index("aggregated into this answer:"))
                value, _ = json.JSONDecoder().raw_decode(text, start)
                return str(value["expression"])
    raise ValueError("the verification prompt shows no aggregate")


def run_pass(
    items: list[EvalItem],
    images: dict[str, tuple[str, float]],
    args: argparse.Namespace,
    top_logprobs: int,
) -> EvalReport:
    # The fake server lives with the tests (it needs pytest), so it is loaded here.
    from tests.fake_openai import FakeOpenAI

    model = SyntheticModel(images, args.jitter, args.seed, args.commit)
    with FakeOpenAI(responder=model.respond, expression_logprobs=model.logprobs) as server:
        config = ClientConfig(
            base_url=server.base_url, api_key="bench", model="gpt-4o", top_logprobs=top_logprobs
        )
        with OpenAIBackend(VLLMClient(config), model="gpt-4o") as backend:
            params = UAMCParams(k0=args.k0, va_sem_threshold=args.va_sem_threshold)
            return evaluate(backend, items, params, VOCABULARY)


def unflagged_error(report: EvalReport) -> float:
    kept = [o for o in report.items if not o.flagged]
    return sum(not o.correct for o in kept) / len(kept) if kept else float("nan")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--jitter", type=float, default=0.3, help="sd of per-choice noise")
    parser.add_argument("--seed", type=int, default=20261206)
    parser.add_argument(
        "--commit", type=float, default=0.0, help="share of each sample's mass its reasoning fixes"
    )
    parser.add_argument(
        "--k0", type=int, default=UAMCParams().k0, help="first round's samples (both passes)"
    )
    parser.add_argument(
        "--va-sem-threshold",
        type=float,
        default=UAMCParams().va_sem_threshold,
        help="a large value takes VA out of the stopping decision (both passes)",
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.commit < 1.0:
        # At 1 the other classes would get no probability, and no log-probability.
        parser.error("--commit must lie in [0, 1)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    items, images = [], {}
    for seed in range(args.images):
        image = synthetic_image(seed)
        truth = rng.choice(EXPRESSIONS)
        p = min(0.98, max(0.3, rng.betavariate(5.0, 1.5)))
        images[image_data_url(image, max_side=512)] = (truth, p)
        items.append(EvalItem(image, name=f"synthetic_{seed:04d}", expression=truth))
    reports = {label: run_pass(items, images, args, n) for label, n in (("off", 0), ("on", 10))}
    print(
        f"# Soft votes from logprobs on the fake server ({args.images} images, "
        f"jitter {args.jitter}, commit {args.commit}, seed {args.seed}, "
        f"SV-UAMC defaults with k0 {args.k0}, va_sem_threshold {args.va_sem_threshold})\n"
    )
    print(
        "| logprobs | samples/image | accuracy | flagged | error among unflagged "
        "| AUROC of expression confidence |"
    )
    print("|---|---|---|---|---|---|")
    for label, report in reports.items():
        print(
            f"| {label} | {report.cost['samples_per_image']:.2f} "
            f"| {report.expression['accuracy']:.3f} | {report.confidence['flagged_rate']:.3f} "
            f"| {unflagged_error(report):.3f} | {report.confidence['auroc']:.3f} |"
        )
    ratio = reports["on"].cost["samples_per_image"] / reports["off"].cost["samples_per_image"]
    print(f"\nsamples per image, on / off: {ratio:.3f}")


if __name__ == "__main__":
    main()
