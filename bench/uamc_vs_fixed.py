"""SV-UAMC against fixed-N sampling and single-shot, on the same images.

Usage (from the repository root)::

    python bench/uamc_vs_fixed.py [--data ../shared/data] [--datasets ferplus affectnet_val]
                                  [--limit N]
    python bench/uamc_vs_fixed.py --tune [--limit N]
    python bench/uamc_vs_fixed.py --openai-fake [--images N]

The default mode runs the offline annotator with the three strategies of one code
path (``uamc``, ``fixed`` with N = kmax, ``single``) and prints, per dataset:
samples per image (the verification counts as a sample), expression accuracy,
AUROC of the expression confidence for right versus wrong, the error rate among
auto-accepted images when 30% go to review next to the overall error rate, and
the Spearman correlation of the confidence with the FER+ plurality vote share.
It prints figures and the project's targets beside them; it asserts nothing.
Two reference rankings follow, to read the review-budget target by: the network's
own maximum probability on its deterministic answers, and (where votes exist) the
FER+ vote share ranking SV-UAMC's answers, which reads the labels and so is no
confidence SEKE could compute, but a perfect estimate of human ambiguity.

``--tune`` scores a grid of SV-UAMC parameters on images the offline network
never trained on: the part of ``ferplus_train`` and ``affectnet_train`` that the
training script holds out for model selection, recomputed from the seed in the
weights' metadata. The evaluation sets are never used for tuning.

``--openai-fake`` runs the strategies through the real OpenAI backend against the
project's fake OpenAI server (``tests/fake_openai.py``) on drawn faces, and prints
tokens and cost per image at GPT-4o list prices (the server counts tokens the way
GPT-4o bills them). Its responder plays an imperfect model: each face has a hidden
expression and a chance ``p`` (Beta(5, 1.5), mean 0.77, clipped to [0.3, 0.98])
that one sample names it, another class otherwise; VA is drawn around the named
class's AffectNet mean (standard deviation 0.15) and AUs from its EMFACS prototype
with each flipped one time in ten. These figures show cost mechanics, not the
accuracy of any real model.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
# The script is run from a checkout, not an installed package, so the
# repository root is put on the import path before importing SEKE.
sys.path.insert(0, str(REPO))

from seke_app.engine import metrics  # noqa: E402
from seke_app.engine.evaluate import EvalItem, EvalReport, evaluate, read_manifest  # noqa: E402
from seke_app.engine.knowledge import PROTOTYPES, VA_PRIORS  # noqa: E402
from seke_app.engine.llm.backend import OpenAIBackend  # noqa: E402
from seke_app.engine.llm.client import ClientConfig, VLLMClient, image_data_url  # noqa: E402
from seke_app.engine.offline.backend import OfflineBackend  # noqa: E402
from seke_app.engine.offline.model import OfflineModel, OfflinePrediction  # noqa: E402
from seke_app.engine.schema import answer_to_schema_json  # noqa: E402
from seke_app.engine.types import Answer  # noqa: E402
from seke_app.engine.uamc import STRATEGIES, ConfidenceWeights, UAMCParams  # noqa: E402
from seke_app.engine.vocab import EXPRESSIONS, Vocabulary  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"
VOCABULARY = Vocabulary()
# The larger step shown beside the defaults in --openai-fake mode.
FAKE_STEP = 4


def strategy_params(base: UAMCParams) -> dict[str, UAMCParams]:
    return {s: replace(base, strategy=s) for s in STRATEGIES}


def _progress(label: str) -> Callable[[int, int], None]:
    started = time.monotonic()

    def report(done: int, total: int) -> None:
        if done == total or done % 100 == 0:
            rate = done / max(time.monotonic() - started, 1e-9)
            print(f"  {label}: {done}/{total} ({rate:.1f} images/s)", file=sys.stderr, flush=True)

    return report


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# --- Offline mode ------------------------------------------------------------------


def print_table(title: str, reports: dict[str, EvalReport]) -> None:
    print(f"\n## {title}\n")
    print(
        "| strategy | samples/image | accuracy | macro-F1 | AUROC | err@30% | overall err "
        "| Spearman vote share | flagged |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for strategy, report in reports.items():
        c = report.confidence
        print(
            f"| {strategy} | {report.cost['samples_per_image']:.2f} "
            f"| {_fmt(report.expression.get('accuracy'))} "
            f"| {_fmt(report.expression.get('macro_f1'))} | {_fmt(c['auroc'])} "
            f"| {_fmt(c['accepted_error_rate'].get('30%'))} | {_fmt(c['error_rate'])} "
            f"| {_fmt(c['spearman_vote_share'])} | {_fmt(c['flagged_rate'])} |"
        )


def accepted_share(report: EvalReport) -> float | None:
    """Error rate among the auto-accepted at a 30% review budget, over the overall rate."""
    accepted = report.confidence["accepted_error_rate"].get("30%")
    overall = report.confidence["error_rate"]
    return accepted / overall if accepted is not None and overall else None


def print_targets(reports: dict[str, EvalReport]) -> None:
    uamc, fixed = reports["uamc"], reports["fixed"]
    ratio = uamc.cost["samples_per_image"] / fixed.cost["samples_per_image"]
    gap = (uamc.expression["accuracy"] - fixed.expression["accuracy"]) * 100
    c = uamc.confidence
    half = accepted_share(uamc)
    print(f"\n- samples uamc/fixed: {ratio:.3f} (target <= 0.40)")
    print(f"- accuracy uamc - fixed: {gap:+.2f} points (target: within 1 point)")
    print(f"- AUROC of uamc confidence: {_fmt(c['auroc'])} (target >= 0.75 on ferplus)")
    print(f"- uamc error auto-accepted at 30% review / overall: {_fmt(half)} (target <= 0.5)")
    print(
        f"- Spearman uamc confidence vs FER+ vote share: {_fmt(c['spearman_vote_share'])} "
        "(target >= 0.4, where votes exist)"
    )


def _ranking(correct: Sequence[bool], confidence: Sequence[float]) -> str:
    overall = 1.0 - sum(correct) / len(correct)
    accepted = metrics.accepted_error_rate(correct, confidence, 0.3)
    return (
        f"accuracy {1 - overall:.3f}, AUROC {metrics.auroc(correct, confidence):.3f}, "
        f"error auto-accepted at 30% review / overall {accepted / overall:.3f}"
    )


def print_references(model: OfflineModel, items: Sequence[EvalItem], uamc: EvalReport) -> None:
    """Other rankings of right and wrong answers, for reading the review-budget target.

    The network's maximum probability on the plain image ranks its own deterministic
    answers. The FER+ vote share ranks SV-UAMC's answers by how much people agreed:
    no confidence SEKE could compute (it reads the labels), but a perfect estimate
    of human ambiguity.
    """
    labelled = [item for item in items if item.expression is not None]
    if not labelled:
        return
    probs = np.concatenate(
        [
            model.predict(
                [Image.open(io.BytesIO(i.image_bytes)) for i in labelled[s : s + 256]]
            ).probs
            for s in range(0, len(labelled), 256)
        ]
    )
    correct = [
        EXPRESSIONS[int(p.argmax())] == i.expression for p, i in zip(probs, labelled, strict=True)
    ]
    print(f"- reference, the network's maximum probability: {_ranking(correct, probs.max(1))}")
    scored = [o for o in uamc.items if o.vote_share is not None and o.truth is not None]
    if scored:
        shares = [float(o.vote_share or 0.0) for o in scored]
        print(
            "- reference, SV-UAMC's answers ranked by the FER+ vote share: "
            + _ranking([o.correct for o in scored], shares)
        )


def run_offline(args: argparse.Namespace, base: UAMCParams) -> None:
    model = OfflineModel.load(args.weights)
    print(f"# SV-UAMC vs fixed-N vs single-shot, offline annotator\n\nparams: {base.to_json()}")
    for dataset in args.datasets:
        folder = args.data / dataset
        items = read_manifest(folder / "manifest.csv", folder)[: args.limit]
        reports = {
            strategy: evaluate(
                OfflineBackend(model),
                items,
                params,
                VOCABULARY,
                progress=_progress(f"{dataset} {strategy}"),
            )
            for strategy, params in strategy_params(base).items()
        }
        print_table(f"{dataset} ({len(items)} images)", reports)
        print_targets(reports)
        print_references(model, items, reports["uamc"])


# --- Tuning on the training sets' held-out part ------------------------------------


def held_out_items(data: Path, metadata: dict[str, Any], limit: int | None) -> list[EvalItem]:
    """The images the training script held out, from its seed and fractions.

    The training script shuffles each class of ``ferplus_train`` (10% held out) and
    then of ``affectnet_train`` (15%) with one generator seeded from ``seed``; the
    same draws here give the same images, which the network never learnt from.
    """
    rng = np.random.default_rng(metadata["seed"])
    chosen: list[EvalItem] = []
    for dataset, fraction in (("ferplus_train", 0.10), ("affectnet_train", 0.15)):
        folder = data / dataset
        items = read_manifest(folder / "manifest.csv", folder)
        labels = np.array([EXPRESSIONS.index(i.expression or "") for i in items])
        held: list[int] = []
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            held += members[: max(1, round(len(members) * fraction))].tolist()
        expected = metadata["training_data"][dataset]["held_out"]
        if len(held) != expected:
            raise SystemExit(f"held-out split of {dataset} does not match the weights' metadata")
        picked = [items[i] for i in sorted(held)]
        chosen += picked[:limit] if limit else picked
    return chosen


class ViewPool:
    """The offline model's interface over a pool of precomputed views per image.

    Tuning runs SV-UAMC hundreds of times on the same images; computing a pool of
    test-time views once and drawing from it (with the caller's generator) keeps
    the grid fast. Temperatures are applied to the pooled probabilities:
    ``softmax(logits / T)`` is proportional to ``p ** (1 / T)``.
    """

    def __init__(self, model: OfflineModel, size: int = 24) -> None:
        self.metadata = model.metadata
        self._model = model
        self._size = size
        self._pools: dict[bytes, OfflinePrediction] = {}
        self._plain: dict[bytes, OfflinePrediction] = {}

    @staticmethod
    def _key(image: Image.Image) -> bytes:
        return hashlib.sha256(image.tobytes()).digest()

    def predict(
        self, images: Sequence[Image.Image], *, temperature: float = 1.0
    ) -> OfflinePrediction:
        key = self._key(images[0])
        if key not in self._plain:
            self._plain[key] = self._model.predict(images)
        return _tempered(self._plain[key], np.arange(1), temperature)

    def predict_augmented(
        self, image: Image.Image, k: int, rng: np.random.Generator, *, temperature: float = 1.0
    ) -> OfflinePrediction:
        key = self._key(image)
        if key not in self._pools:
            pool_rng = np.random.default_rng(int.from_bytes(key[:8], "big"))
            self._pools[key] = self._model.predict_augmented(image, self._size, pool_rng)
        return _tempered(self._pools[key], rng.integers(0, self._size, k), temperature)


def _tempered(pool: OfflinePrediction, rows: np.ndarray, temperature: float) -> OfflinePrediction:
    probs = pool.probs[rows].astype(np.float64) ** (1.0 / temperature)
    probs /= probs.sum(axis=1, keepdims=True)
    return OfflinePrediction(probs.astype(np.float32), pool.va[rows])


TUNING_GRID: list[dict[str, Any]] = [
    {"temperature": t, "plurality_threshold": p}
    for t in (0.5, 1.0, 1.5, 2.0)
    for p in (0.6, 0.7, 0.8)
]
# (agreement, verification, knowledge) weights of the expression confidence with a
# graded verification (the offline annotator's), tried at the defaults.
WEIGHT_GRID: list[tuple[float, float, float]] = [
    (0.7, 0.15, 0.15),
    (0.6, 0.3, 0.1),
    (0.5, 0.4, 0.1),
    (0.45, 0.45, 0.1),
    (0.4, 0.5, 0.1),
    (0.5, 0.45, 0.05),
]


def _tuning_row(label: str, uamc: EvalReport, fixed: EvalReport) -> None:
    c = uamc.confidence
    print(
        f"| {label} | {uamc.cost['samples_per_image']:.2f} "
        f"| {uamc.cost['samples_per_image'] / fixed.cost['samples_per_image']:.3f} "
        f"| {uamc.expression['accuracy']:.3f} | {fixed.expression['accuracy']:.3f} "
        f"| {_fmt(c['auroc'])} | {_fmt(accepted_share(uamc))} "
        f"| {_fmt(c['spearman_vote_share'])} |",
        flush=True,
    )


def run_tune(args: argparse.Namespace, base: UAMCParams) -> None:
    model = OfflineModel.load(args.weights)
    items = held_out_items(args.data, model.metadata, args.limit)
    pool = ViewPool(model)
    print(f"# Tuning on {len(items)} held-out training images\n")
    print(
        "| changes | uamc samples/image | uamc/fixed | acc uamc | acc fixed | AUROC "
        "| err@30%/overall | Spearman |"
    )
    print("|---|---|---|---|---|---|---|---|")
    fixed_by_temperature: dict[float, EvalReport] = {}
    for changes in TUNING_GRID:
        params = replace(base, **changes)
        if params.temperature not in fixed_by_temperature:
            fixed_params = replace(params, strategy="fixed")
            fixed_by_temperature[params.temperature] = evaluate(
                OfflineBackend(pool), items, fixed_params, VOCABULARY
            )
        report = evaluate(OfflineBackend(pool), items, params, VOCABULARY)
        _tuning_row(str(changes), report, fixed_by_temperature[params.temperature])
    fixed = evaluate(OfflineBackend(pool), items, replace(base, strategy="fixed"), VOCABULARY)
    for weights in WEIGHT_GRID:
        params = replace(base, graded_weights=ConfidenceWeights(*weights))
        report = evaluate(OfflineBackend(pool), items, params, VOCABULARY)
        _tuning_row(f"weights {weights}", report, fixed)


# --- Fake OpenAI mode --------------------------------------------------------------


def drawn_face(seed: int) -> bytes:
    """A drawn 256-px face, different for every seed."""
    rng = random.Random(seed)
    image = Image.new("RGB", (256, 256), tuple(rng.randrange(120, 220) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 25, 216, 240), fill=(230, 200, 180))
    for x in (95, 161):
        draw.ellipse((x - 8, 100 - 8, x + 8, 100 + 8), fill=(30, 30, 30))
    top = rng.randrange(150, 180)
    draw.arc(
        (80, top, 176, top + 50),
        rng.choice((0, 180)),
        rng.choice((180, 360)),
        fill=(120, 0, 0),
        width=4,
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class NoisyResponder:
    """Answers like an imperfect VLLM: right with a per-image probability, else another class.

    Every image has a hidden true expression and a difficulty (the chance that one
    sample names the true expression). VA is drawn around the named expression's
    AffectNet mean and AUs from its EMFACS prototype with a tenth flipped. The
    verifier names the true expression a little more often than a sample does and
    confirms or revises the aggregate's expression accordingly. ``va_sd`` and
    ``au_flip`` set the VA spread and the share of AUs flipped.
    """

    def __init__(
        self, truths: dict[str, tuple[str, float]], *, va_sd: float = 0.15, au_flip: float = 0.1
    ) -> None:
        self.truths = truths
        self.va_sd = va_sd
        self.au_flip = au_flip
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any], index: int) -> str:
        url = _image_url(body)
        truth, p_right = self.truths[url]
        with self._lock:
            call = self._counts.get(url, 0) + (index == 0)
            self._counts[url] = call
        rng = random.Random(f"{url[-64:]}:{call}:{index}")
        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("name")
        if schema == "seke_verification":
            return json.dumps(self._verification(body, truth, min(0.97, p_right + 0.1), rng))
        answer = _noisy(truth, p_right, rng, va_sd=self.va_sd, au_flip=self.au_flip)
        return json.dumps(answer_to_schema_json(answer))

    def _verification(
        self, body: dict[str, Any], truth: str, p_right: float, rng: random.Random
    ) -> dict[str, Any]:
        shown = _shown_aggregate(body)
        own = _noisy(truth, p_right, rng, va_sd=self.va_sd, au_flip=self.au_flip).expression
        same = own == shown["expression"]
        shown["expression"] = own
        verdicts = {
            "aus": "confirm",
            "expression": "confirm" if same else "revise",
            "va": "confirm",
        }
        return {"verdicts": {g: {"verdict": v} for g, v in verdicts.items()}, "answer": shown}


def _image_url(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        for part in (
            reversed(message.get("content") or [])
            if isinstance(message.get("content"), list)
            else []
        ):
            if part.get("type") == "image_url":
                return str(part["image_url"]["url"])
    raise ValueError("the request carries no image")


def _shown_aggregate(body: dict[str, Any]) -> dict[str, Any]:
    """The aggregate the verification prompt shows, parsed back from its text."""
    for message in body.get("messages") or []:
        for part in (
            message.get("content") or [] if isinstance(message.get("content"), list) else []
        ):
            text = part.get("text") or ""
            if "aggregated into this answer:" in text:
                start = text.index("{", text.index("aggregated into this answer:"))
                value, _ = json.JSONDecoder().raw_decode(text, start)
                return dict(value)
    raise ValueError("the verification prompt shows no aggregate")


def _noisy(
    truth: str, p_right: float, rng: random.Random, *, va_sd: float = 0.15, au_flip: float = 0.1
) -> Answer:
    others = [e for e in EXPRESSIONS if e != truth]
    expression = truth if rng.random() < p_right else rng.choice(others)
    prior = VA_PRIORS[expression]
    valence = max(-1.0, min(1.0, rng.gauss(prior.valence, va_sd)))
    arousal = max(-1.0, min(1.0, rng.gauss(prior.arousal, va_sd)))
    prototype = set(PROTOTYPES[expression])
    aus = {au: (au in prototype) != (rng.random() < au_flip) for au in VOCABULARY.aus}
    evidence = {
        "aus": "Brows, lids and mouth corners as described by the active action units.",
        "expression": f"The configuration of the face matches {expression} most closely.",
        "va": f"Valence and arousal typical of {expression}, adjusted for intensity.",
    }
    return Answer(expression, round(valence, 2), round(arousal, 2), aus, {}, evidence)


def _fake_backend(server_url: str) -> OpenAIBackend:
    client = VLLMClient(ClientConfig(base_url=server_url, api_key="bench", model="gpt-4o"))
    return OpenAIBackend(client, model="gpt-4o")


def run_openai_fake(args: argparse.Namespace, base: UAMCParams) -> None:
    # The fake server lives with the tests (it needs pytest), so only this mode loads it.
    from tests.fake_openai import FakeOpenAI

    rng = random.Random(20250101)
    items, truths = [], {}
    for seed in range(args.images):
        image = drawn_face(seed)
        truth, p_right = rng.choice(EXPRESSIONS), min(0.98, max(0.3, rng.betavariate(5.0, 1.5)))
        truths[image_data_url(image, max_side=512)] = (truth, p_right)
        items.append(EvalItem(image, name=f"drawn_{seed:04d}", expression=truth))
    print(
        f"# SV-UAMC vs fixed-N on the fake OpenAI server ({len(items)} drawn faces, gpt-4o "
        f"list prices)\n\nparams: {base.to_json()}\n"
    )
    print(
        "| strategy | samples/image | requests/image | prompt tokens/image "
        "| completion tokens/image | cost/image (USD) | accuracy |"
    )
    print("|---|---|---|---|---|---|---|")
    # Every round of samples re-sends the prompt, so on a paid endpoint fewer,
    # larger rounds cost less; the second row shows that trade-off.
    variants = {
        "uamc": base,
        f"uamc, step {FAKE_STEP}": replace(base, step=FAKE_STEP),
        "fixed": replace(base, strategy="fixed"),
        "single": replace(base, strategy="single"),
    }
    for label, params in variants.items():
        with (
            FakeOpenAI(responder=NoisyResponder(truths)) as server,
            _fake_backend(server.base_url) as backend,
        ):
            report = evaluate(backend, items, params, VOCABULARY)
        cost = report.cost
        print(
            f"| {label} | {cost['samples_per_image']:.2f} | {cost['requests_per_image']:.2f} "
            f"| {cost['prompt_tokens_per_image']:.0f} | {cost['completion_tokens_per_image']:.0f} "
            f"| {cost['cost_per_image_usd']:.5f} | {_fmt(report.expression.get('accuracy'))} |",
            flush=True,
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--datasets", nargs="+", default=["ferplus", "affectnet_val"])
    parser.add_argument("--limit", type=int, default=None, help="images per dataset")
    parser.add_argument("--weights", type=Path, default=None, help="offline weights file")
    parser.add_argument("--tune", action="store_true", help="grid on held-out training images")
    parser.add_argument("--openai-fake", action="store_true", help="cost on the fake server")
    parser.add_argument("--images", type=int, default=100, help="drawn faces (--openai-fake)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    base = UAMCParams()
    if args.openai_fake:
        run_openai_fake(args, base)
    elif args.tune:
        run_tune(args, base)
    else:
        run_offline(args, base)


if __name__ == "__main__":
    main()
