"""Completion: the offline annotator predicting the grains a dataset lacks from those it has.

Usage (from the repository root)::

    python bench/completion.py --data ../shared/data [--limit N] [--json OUT]

Runs SV-UAMC at its defaults with the offline annotator, through
``seke_app.engine.evaluate.evaluate`` (the code behind ``manage.py seke_evaluate
--given``), on

* ``affectnet_val``: the image alone, then with VA given (the expression is
  scored), then with the expression given (VA is scored);
* ``ckplus_facs`` (FEID's 17 AUs): the image alone, then with the AUs given
  (the expression is scored), then with the expression given (the AUs are
  scored). The CK+ AU rates the fusion uses were counted on this very set, so
  these two completions are in-sample. Its 57 neutral onset frames code no AUs;
  with AUs given they are read from the image alone, and the expression
  accuracy is also printed on the 163 peak frames that have AUs.

Beside SEKE's figures it prints the references of issue 17, each computed from
training data only: the VA-only classifiers (the argmax of the fusion's own
P(VA | e), and of one Gaussian per class fitted on ``affectnet_train``), the
expression's mean VA on ``affectnet_train``, the AU-only classifier (the argmax
of the fusion's P(AUs | e); in-sample on CK+), and the image alone. It asserts
nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
# The script is run from a checkout, not an installed package, so the
# repository root is put on the import path before importing SEKE.
sys.path.insert(0, str(REPO))

from seke_app.engine import metrics  # noqa: E402
from seke_app.engine.evaluate import EvalItem, EvalReport, evaluate, read_manifest  # noqa: E402
from seke_app.engine.fusion import KnownEvidence, known_log_likelihoods  # noqa: E402
from seke_app.engine.likelihoods import default_likelihoods, fit_va  # noqa: E402
from seke_app.engine.offline.backend import OfflineBackend  # noqa: E402
from seke_app.engine.offline.model import OfflineModel  # noqa: E402
from seke_app.engine.types import KnownLabels  # noqa: E402
from seke_app.engine.uamc import UAMCParams  # noqa: E402
from seke_app.engine.vocab import Vocabulary  # noqa: E402

VOCABULARY = Vocabulary()
# Issue 17's targets.
TARGETS = {
    "expression | VA": 0.87,
    "VA | expression": 0.92,
    "expression | AUs": 0.96,
    "AUs | expression": 0.60,
}


def _progress(label: str) -> Any:
    def report(done: int, total: int) -> None:
        if done == total or done % 200 == 0:
            print(f"  {label}: {done}/{total}", file=sys.stderr, flush=True)

    return report


def run(
    model: OfflineModel, items: Sequence[EvalItem], given: tuple[str, ...], label: str
) -> EvalReport:
    return evaluate(
        OfflineBackend(model),
        items,
        UAMCParams(),
        VOCABULARY,
        given=given,
        progress=_progress(label),
    )


def va_only_accuracy(items: Sequence[EvalItem]) -> float:
    """The argmax of the fusion's P(VA | e): what the known VA alone says."""
    likelihoods = default_likelihoods()
    truth, predicted = [], []
    for item in items:
        evidence = KnownEvidence.of(
            KnownLabels(valence=item.valence, arousal=item.arousal), VOCABULARY
        )
        log_lik = known_log_likelihoods(evidence, VOCABULARY, likelihoods)
        truth.append(item.expression)
        predicted.append(VOCABULARY.expressions[int(np.argmax(log_lik))])
    return metrics.accuracy(truth, predicted)


def _train_va(data: Path) -> dict[str, np.ndarray]:
    with (data / "affectnet_train" / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_class: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        by_class.setdefault(row["expression"], []).append(
            (float(row["valence"]), float(row["arousal"]))
        )
    return {e: np.array(points) for e, points in by_class.items()}


def gaussian_accuracy(items: Sequence[EvalItem], train: dict[str, np.ndarray]) -> float:
    """The argmax of one full-covariance Gaussian per class fitted on ``affectnet_train``."""
    params = {e: (p.mean(axis=0), np.cov(p.T)) for e, p in train.items()}
    truth, predicted = [], []
    for item in items:
        x = np.array([item.valence, item.arousal])
        scores = {}
        for e, (mean, cov) in params.items():
            diff = x - mean
            scores[e] = -0.5 * (diff @ np.linalg.solve(cov, diff) + np.linalg.slogdet(cov)[1])
        truth.append(item.expression)
        predicted.append(max(scores, key=lambda e: scores[e]))
    return metrics.accuracy(truth, predicted)


def cross_validated(train: dict[str, np.ndarray], folds: int = 5) -> dict[str, float]:
    """VA-only accuracy on ``affectnet_train`` by ``folds``-fold cross-validation, for
    the fusion's mixtures and for one Gaussian per class: why the mixtures were chosen."""
    rows = [(e, float(v), float(a)) for e, points in train.items() for v, a in points]
    fold = np.random.default_rng(0).permutation(len(rows)) % folds
    right = {"mixtures": 0, "gaussian": 0}
    for k in range(folds):
        fit = [r for r, f in zip(rows, fold, strict=True) if f != k]
        test = [r for r, f in zip(rows, fold, strict=True) if f == k]
        mixtures = fit_va(fit)
        gaussians = {e: np.array([(v, a) for g, v, a in fit if g == e]) for e in mixtures}
        items = [EvalItem(b"", expression=e, valence=v, arousal=a) for e, v, a in test]
        for e, v, a in test:
            scores = {g: m.log_density(v, a) for g, m in mixtures.items()}
            right["mixtures"] += max(scores, key=lambda g: scores[g]) == e
        right["gaussian"] += round(gaussian_accuracy(items, gaussians) * len(test))
    return {name: n / len(rows) for name, n in right.items()}


def head_offsets() -> list[str]:
    """The VA head's mean reading per expression on held-out faces, beside the truth's."""
    likelihoods = default_likelihoods()
    lines = []
    for e, (hv, ha) in likelihoods.head.offsets.items():
        tv, ta = likelihoods.va[e].mean()
        lines.append(f"{e} ({hv:+.2f}, {ha:+.2f}) against ({tv:+.2f}, {ta:+.2f})")
    return lines


def mean_va_ccc(items: Sequence[EvalItem], train: dict[str, np.ndarray]) -> tuple[float, float]:
    """CCC of each image's expression's mean VA on ``affectnet_train``."""
    means = {e: p.mean(axis=0) for e, p in train.items()}
    guesses = np.array([means[item.expression or ""] for item in items])
    truth = np.array([(item.valence, item.arousal) for item in items])
    return metrics.ccc(truth[:, 0], guesses[:, 0]), metrics.ccc(truth[:, 1], guesses[:, 1])


def au_only_accuracy(items: Sequence[EvalItem]) -> float:
    """The argmax of the fusion's P(AUs | e) on the frames that code AUs (in-sample)."""
    likelihoods = default_likelihoods()
    truth, predicted = [], []
    for item in items:
        evidence = KnownEvidence.of(KnownLabels(aus=item.aus), VOCABULARY)
        log_lik = known_log_likelihoods(evidence, VOCABULARY, likelihoods)
        truth.append(item.expression)
        predicted.append(VOCABULARY.expressions[int(np.argmax(log_lik))])
    return metrics.accuracy(truth, predicted)


def accuracy_on(report: EvalReport, names: set[str]) -> float:
    chosen = [o for o in report.items if o.name in names]
    return sum(o.correct for o in chosen) / len(chosen)


def _row(name: str, dataset: str, seke: str, image: str, references: str, target: str) -> str:
    return f"| {name} | `{dataset}` | {seke} | {image} | {references} | {target} |"


def _met(value: float, target: float) -> str:
    return f"≥ {target:.2f} ({'met' if value >= target else 'missed'})"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="images per dataset")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = parser.parse_args(argv)
    model = OfflineModel.load()
    train = _train_va(args.data)
    figures: dict[str, Any] = {}
    with threadpool_limits(limits=1):
        folder = args.data / "affectnet_val"
        affectnet = read_manifest(folder / "manifest.csv", folder)[: args.limit]
        alone = run(model, affectnet, (), "affectnet_val, image only")
        given_va = run(model, affectnet, ("va",), "affectnet_val, VA given")
        given_expression = run(model, affectnet, ("expression",), "affectnet_val, expression given")
        folder = args.data / "ckplus_facs"
        ckplus = read_manifest(folder / "manifest.csv", folder)[: args.limit]
        ck_alone = run(model, ckplus, (), "ckplus_facs, image only")
        ck_aus = run(model, ckplus, ("aus",), "ckplus_facs, AUs given")
        ck_expression = run(model, ckplus, ("expression",), "ckplus_facs, expression given")
    assert given_expression.va is not None and alone.va is not None
    assert ck_expression.aus is not None and ck_alone.aus is not None
    coded = [item for item in ckplus if item.aus]
    coded_names = {item.name for item in coded}
    mean_v, mean_a = mean_va_ccc(affectnet, train)
    figures = {
        "affectnet_val": {
            "n": len(affectnet),
            "image_only": {
                "accuracy": alone.expression["accuracy"],
                "ccc_valence": alone.va["ccc_valence"],
                "ccc_arousal": alone.va["ccc_arousal"],
            },
            "expression_given_va": given_va.expression["accuracy"],
            "va_given_expression": {
                "ccc_valence": given_expression.va["ccc_valence"],
                "ccc_arousal": given_expression.va["ccc_arousal"],
                "rmse_valence": given_expression.va["rmse_valence"],
                "rmse_arousal": given_expression.va["rmse_arousal"],
            },
            "va_only_mixture": va_only_accuracy(affectnet),
            "va_only_gaussian": gaussian_accuracy(affectnet, train),
            "mean_va": {"ccc_valence": mean_v, "ccc_arousal": mean_a},
            "va_only_cross_validated_on_affectnet_train": cross_validated(train),
            "flagged": {
                "image_only": alone.confidence["flagged_rate"],
                "va_given": given_va.confidence["flagged_rate"],
                "expression_given": given_expression.confidence["flagged_rate"],
            },
        },
        "ckplus_facs": {
            "n": len(ckplus),
            "n_with_aus": len(coded),
            "image_only": {
                "accuracy": ck_alone.expression["accuracy"],
                "accuracy_with_aus": accuracy_on(ck_alone, coded_names),
                "au_mean_f1": ck_alone.aus["mean_f1"],
            },
            "expression_given_aus": ck_aus.expression["accuracy"],
            "expression_given_aus_with_aus": accuracy_on(ck_aus, coded_names),
            "aus_given_expression": ck_expression.aus["mean_f1"],
            "au_only": au_only_accuracy(coded),
            "flagged": {
                "image_only": ck_alone.confidence["flagged_rate"],
                "aus_given": ck_aus.confidence["flagged_rate"],
                "expression_given": ck_expression.confidence["flagged_rate"],
            },
        },
    }
    print_table(figures)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))


def print_table(figures: dict[str, Any]) -> None:
    a, c = figures["affectnet_val"], figures["ckplus_facs"]
    va = a["va_given_expression"]
    print(f"# Completion ({a['n']} affectnet_val, {c['n']} ckplus_facs images)\n")
    print("| completion | set | SEKE, given | image only | references | target |")
    print("|---|---|---|---|---|---|")
    print(
        _row(
            "expression given VA (accuracy)",
            "affectnet_val",
            f"**{a['expression_given_va']:.3f}**",
            f"{a['image_only']['accuracy']:.3f}",
            f"VA only: the fusion's VA mixtures {a['va_only_mixture']:.3f}, "
            f"one Gaussian per class {a['va_only_gaussian']:.3f}",
            _met(a["expression_given_va"], TARGETS["expression | VA"]),
        )
    )
    print(
        _row(
            "VA given expression (CCC V / A)",
            "affectnet_val",
            f"**{va['ccc_valence']:.3f} / {va['ccc_arousal']:.3f}**",
            f"{a['image_only']['ccc_valence']:.3f} / {a['image_only']['ccc_arousal']:.3f}",
            f"expression's mean VA {a['mean_va']['ccc_valence']:.3f} / "
            f"{a['mean_va']['ccc_arousal']:.3f}",
            f"≥ 0.92 (V {'met' if va['ccc_valence'] >= 0.92 else 'missed'}, "
            f"A {'met' if va['ccc_arousal'] >= 0.92 else 'missed'})",
        )
    )
    print(
        _row(
            "expression given AUs (accuracy; in-sample)",
            "ckplus_facs",
            f"**{c['expression_given_aus']:.3f}** ({c['expression_given_aus_with_aus']:.3f} on "
            f"the {c['n_with_aus']} frames with AUs)",
            f"{c['image_only']['accuracy']:.3f} ({c['image_only']['accuracy_with_aus']:.3f})",
            f"AUs only ({c['n_with_aus']} frames): {c['au_only']:.3f}",
            _met(c["expression_given_aus"], TARGETS["expression | AUs"]),
        )
    )
    print(
        _row(
            "AUs given expression (mean AU F1, 17 AUs; in-sample)",
            "ckplus_facs",
            f"**{c['aus_given_expression']:.3f}**",
            f"{c['image_only']['au_mean_f1']:.3f}",
            "—",
            _met(c["aus_given_expression"], TARGETS["AUs | expression"]),
        )
    )
    print(
        f"\nVA given expression, RMSE V / A: {va['rmse_valence']:.3f} / {va['rmse_arousal']:.3f}."
    )
    cv = a["va_only_cross_validated_on_affectnet_train"]
    print(
        "VA-only accuracy, 5-fold cross-validation on affectnet_train: mixtures "
        f"{cv['mixtures']:.3f}, one Gaussian per class {cv['gaussian']:.3f}."
    )
    likelihoods = default_likelihoods()
    print(
        f"Fitted: image weight {likelihoods.image_weight}; VA head gain "
        f"{[list(row) for row in likelihoods.head.gain]}; head's mean reading (V, A) per "
        "expression on held-out faces against the true mean: " + "; ".join(head_offsets()) + "."
    )
    print(
        "Flagged for review: affectnet_val image only {image_only:.3f}, VA given {va_given:.3f}, "
        "expression given {expression_given:.3f}; ".format(**a["flagged"])
        + "ckplus_facs image only {image_only:.3f}, AUs given {aus_given:.3f}, "
        "expression given {expression_given:.3f}.".format(**c["flagged"])
    )


if __name__ == "__main__":
    main()
