"""The certified auto-accept threshold, recalibration and PPI++ on a labelled folder.

Usage (from the repository root)::

    python bench/certify.py --images ../shared/data/ferplus \\
        --manifest ../shared/data/ferplus/manifest.csv [--alpha 0.2] [--delta 0.05] \\
        [--audit 0.2] [--audit-min 50] [--repeats 200] [--seed 0] [--json OUT]

The offline annotator (SV-UAMC at its defaults) runs once on every image of the
manifest that has an expression label; the expression is the graded grain. Then,
``--repeats`` times, a blind audit is drawn: a uniform random share ``--audit`` of
the images (at least ``--audit-min`` where there are that many), whose manifest
labels stand in for the blind reviewers. On each draw the script

* certifies a threshold with ``seke_app.engine.certify.certify`` on the audit and
  records what it auto-accepts: the images not audited whose confidence is at
  least the threshold, and their realised expression error;
* fits ``seke_app.engine.calibration.fit_calibration`` on the audit and measures
  the expected calibration error (``metrics.expected_calibration_error``, ten
  bins) of the images not audited, before and after the map;
* computes the PPI++ interval (``seke_app.engine.ppi.ppi_mean``; truth = the
  machine is right, prediction = its raw expression confidence, unlabelled = the
  images not audited) and the audit-only Wilson interval for the machine's
  expression accuracy over all the images, and whether each covers it.

Printed, and written with ``--json`` under these keys: ``violation_rate`` (share of
draws whose realised error among auto-accepted images exceeds ``alpha``; a draw
that certifies nothing accepts nothing and violates nothing), ``mean_coverage``
(mean share of all images at or above the certified threshold, 0 when nothing is
certified), ``oracle_coverage`` (the largest share any threshold could accept at
error <= ``alpha`` knowing every label), ``ppi_coverage``, ``classical_coverage``,
``ppi_width``, ``classical_width``, ``ece_before`` and ``ece_after``, plus the
share of draws that certified anything and the median audit size ``needed`` when
they did not. It asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
# The script is run from a checkout, not an installed package, so the
# repository root is put on the import path before importing SEKE.
sys.path.insert(0, str(REPO))

from seke_app.engine import metrics  # noqa: E402
from seke_app.engine.calibration import fit_calibration  # noqa: E402
from seke_app.engine.certify import certify  # noqa: E402
from seke_app.engine.evaluate import evaluate, read_manifest  # noqa: E402
from seke_app.engine.offline.backend import OfflineBackend  # noqa: E402
from seke_app.engine.offline.model import OfflineModel  # noqa: E402
from seke_app.engine.ppi import classical_mean, ppi_mean  # noqa: E402
from seke_app.engine.uamc import UAMCParams  # noqa: E402
from seke_app.engine.vocab import Vocabulary  # noqa: E402

Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Draw:
    """What one random audit led to."""

    certified: bool
    needed: int | None
    coverage: float
    violated: bool
    ppi_covers: bool
    classical_covers: bool
    ppi_width: float
    classical_width: float
    ece_before: float
    ece_after: float
    calibration: str


def annotate(images: Path, manifest: Path, weights: Path | None) -> tuple[Bools, Floats]:
    """Whether the offline annotator is right, and its expression confidence, per image."""
    items = [i for i in read_manifest(manifest, images) if i.expression is not None]
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        if done == total or done % 200 == 0:
            rate = done / max(time.monotonic() - started, 1e-9)
            print(f"  annotated {done}/{total} ({rate:.1f} images/s)", file=sys.stderr)

    model = OfflineModel.load(weights)
    report = evaluate(OfflineBackend(model), items, UAMCParams(), Vocabulary(), progress=progress)
    correct = np.array([o.correct for o in report.items], dtype=bool)
    confidence = np.array([o.expression_confidence for o in report.items], dtype=np.float64)
    return correct, confidence


def oracle_coverage(correct: Bools, confidence: Floats, alpha: float) -> float:
    """The largest share of images some threshold accepts with error <= alpha."""
    order = np.argsort(-confidence, kind="stable")
    sorted_conf = confidence[order]
    errors = np.cumsum(~correct[order])
    # Only cuts between distinct confidences are thresholds.
    last_of_tie = np.r_[sorted_conf[1:] != sorted_conf[:-1], True]
    counts = np.arange(1, confidence.size + 1)
    feasible = last_of_tie & (errors <= alpha * counts)
    return float(counts[feasible].max() / confidence.size) if feasible.any() else 0.0


def one_draw(
    correct: Bools, confidence: Floats, audited: Bools, alpha: float, delta: float
) -> Draw:
    certificate = certify(
        audit_confidence=confidence[audited],
        audit_error=~correct[audited],
        all_confidence=confidence,
        alpha=alpha,
        delta=delta,
    )
    violated = False
    if certificate.threshold is not None:
        accepted = (confidence >= certificate.threshold) & ~audited
        violated = bool(accepted.any() and np.mean(~correct[accepted]) > alpha)
    truth = float(correct.mean())
    ppi = ppi_mean(
        labelled_truth=correct[audited],
        labelled_pred=confidence[audited],
        unlabelled_pred=confidence[~audited],
    )
    classical = classical_mean(labelled_truth=correct[audited])
    calibration = fit_calibration(confidence[audited], correct[audited])
    rest_right, rest_conf = correct[~audited], confidence[~audited]
    return Draw(
        certified=certificate.threshold is not None,
        needed=certificate.needed,
        coverage=certificate.coverage,
        violated=violated,
        ppi_covers=ppi.covers(truth),
        classical_covers=classical.covers(truth),
        ppi_width=ppi.width,
        classical_width=classical.width,
        ece_before=metrics.expected_calibration_error(rest_right, rest_conf),
        ece_after=metrics.expected_calibration_error(rest_right, calibration.apply(rest_conf)),
        calibration=calibration.method,
    )


def audit_size(n_images: int, share: float, minimum: int) -> int:
    return min(n_images, max(round(share * n_images), minimum))


def simulate(
    correct: Bools,
    confidence: Floats,
    *,
    alpha: float,
    delta: float,
    audit: float,
    audit_min: int,
    repeats: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The figures of the module docstring over ``repeats`` random audits."""
    rng = np.random.default_rng(seed)
    n_audit = audit_size(confidence.size, audit, audit_min)
    draws: list[Draw] = []
    for repeat in range(repeats):
        audited = np.zeros(confidence.size, dtype=bool)
        audited[rng.choice(confidence.size, n_audit, replace=False)] = True
        draws.append(one_draw(correct, confidence, audited, alpha, delta))
        if progress is not None:
            progress(repeat + 1)
    needed = [d.needed for d in draws if d.needed is not None]
    methods = [d.calibration for d in draws]
    return {
        "n_images": int(confidence.size),
        "n_audit": n_audit,
        "accuracy": float(correct.mean()),
        "alpha": alpha,
        "delta": delta,
        "repeats": repeats,
        "violation_rate": float(np.mean([d.violated for d in draws])),
        "mean_coverage": float(np.mean([d.coverage for d in draws])),
        "oracle_coverage": oracle_coverage(correct, confidence, alpha),
        "certified_share": float(np.mean([d.certified for d in draws])),
        "needed_median": int(statistics.median(needed)) if needed else None,
        "ppi_coverage": float(np.mean([d.ppi_covers for d in draws])),
        "classical_coverage": float(np.mean([d.classical_covers for d in draws])),
        "ppi_width": float(np.mean([d.ppi_width for d in draws])),
        "classical_width": float(np.mean([d.classical_width for d in draws])),
        "ece_before": float(np.mean([d.ece_before for d in draws])),
        "ece_after": float(np.mean([d.ece_after for d in draws])),
        "calibration_methods": {m: methods.count(m) for m in sorted(set(methods))},
    }


def _target(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_report(result: dict[str, Any]) -> None:
    r = result
    print(
        f"\n{r['n_images']} images, machine accuracy {r['accuracy']:.3f}; {r['repeats']} audits "
        f"of {r['n_audit']} images; alpha {r['alpha']}, delta {r['delta']}\n"
    )
    print(
        f"- violation_rate {r['violation_rate']:.3f} "
        f"(target <= {r['delta']}: {_target(r['violation_rate'] <= r['delta'])})"
    )
    ratio = r["mean_coverage"] / r["oracle_coverage"] if r["oracle_coverage"] else float("nan")
    print(
        f"- mean_coverage {r['mean_coverage']:.3f}, oracle_coverage {r['oracle_coverage']:.3f}, "
        f"ratio {ratio:.3f} (target >= 0.75: {_target(ratio >= 0.75)})"
    )
    print(f"- certified in {r['certified_share']:.1%} of draws", end="")
    if r["needed_median"] is not None:
        print(
            f"; when not, the audit is too small: about {r['needed_median']} audit references "
            f"would be needed (median over those draws, against {r['n_audit']} drawn)"
        )
    else:
        print()
    ppi_ok = r["ppi_coverage"] >= 0.93 and r["ppi_width"] < r["classical_width"]
    print(
        f"- ppi_coverage {r['ppi_coverage']:.3f} (width {r['ppi_width']:.4f}), "
        f"classical_coverage {r['classical_coverage']:.3f} (width {r['classical_width']:.4f}) "
        f"(target ppi >= 0.93 and narrower: {_target(ppi_ok)})"
    )
    print(
        f"- ece_before {r['ece_before']:.4f}, ece_after {r['ece_after']:.4f} "
        f"(target <= 0.05: {_target(r['ece_after'] <= 0.05)}); maps chosen "
        f"{r['calibration_methods']}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder the manifest is in")
    parser.add_argument("--manifest", type=Path, required=True, help="manifest CSV")
    parser.add_argument("--alpha", type=float, default=0.2, help="target expression error")
    parser.add_argument("--delta", type=float, default=0.05, help="1 - confidence level")
    parser.add_argument("--audit", type=float, default=0.2, help="share of images audited")
    parser.add_argument("--audit-min", type=int, default=50, help="fewest images audited")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, default=None, help="offline weights file")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    for name in ("alpha", "delta", "audit"):
        if not 0.0 < getattr(args, name) < 1.0:
            parser.error(f"--{name} must lie strictly between 0 and 1")
    if args.repeats < 1 or args.audit_min < 2:
        parser.error("--repeats must be at least 1 and --audit-min at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    correct, confidence = annotate(args.images, args.manifest, args.weights)
    if correct.size < 4:
        raise SystemExit("the manifest has fewer than 4 images with an expression label")
    result = simulate(
        correct,
        confidence,
        alpha=args.alpha,
        delta=args.delta,
        audit=args.audit,
        audit_min=args.audit_min,
        repeats=args.repeats,
        seed=args.seed,
    )
    print(f"# bench/certify.py on {args.manifest}")
    print_report(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
