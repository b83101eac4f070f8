"""Accuracy of the offline annotator on the FER+ and AffectNet evaluation sets.

Usage (from the repository root)::

    python bench/offline_accuracy.py [--data ../shared/data] [--weights PATH]

Prints top-1 accuracy and macro-F1 over the eight expressions on ``ferplus``
(against the FER+ plurality label) and ``affectnet_val``, a confusion matrix for
each, and valence/arousal CCC and RMSE on ``affectnet_val``. Only deterministic
predictions are scored here; the stochastic samples are SV-UAMC's business.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# The script is run from a checkout, not an installed package, so the
# repository root is put on the import path before importing SEKE.
sys.path.insert(0, str(REPO))

from seke_app.engine import metrics  # noqa: E402
from seke_app.engine.offline.model import OfflineModel, OfflinePrediction  # noqa: E402
from seke_app.engine.vocab import EXPRESSIONS  # noqa: E402


def read_set(folder: Path) -> list[dict[str, str]]:
    with (folder / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def predict_set(model: OfflineModel, folder: Path, rows: list[dict[str, str]]) -> OfflinePrediction:
    batch = []
    for row in rows:
        with Image.open(folder / row["file"]) as image:
            batch.append(model.preprocess(image))
    return model.predict_arrays(np.stack(batch))


def print_confusion(truth: list[str], predicted: list[str]) -> None:
    matrix = metrics.confusion_matrix(truth, predicted, EXPRESSIONS)
    short = [name[:5] for name in EXPRESSIONS]
    print("  truth \\ predicted  " + " ".join(f"{name:>5}" for name in short) + "  recall")
    for name, counts in zip(EXPRESSIONS, matrix, strict=True):
        recall = counts[EXPRESSIONS.index(name)] / counts.sum() if counts.sum() else 0.0
        print(f"  {name:<18} " + " ".join(f"{c:5d}" for c in counts) + f"  {recall:6.3f}")


def score_set(model: OfflineModel, folder: Path) -> None:
    rows = read_set(folder)
    started = time.perf_counter()
    prediction = predict_set(model, folder, rows)
    seconds = time.perf_counter() - started
    truth = [row["expression"] for row in rows]
    predicted = prediction.labels()
    print(f"\n{folder.name}: {len(rows)} images ({seconds:.1f}s incl. decoding)")
    print(f"  top-1 accuracy {metrics.accuracy(truth, predicted):.4f}")
    print(f"  macro-F1       {metrics.macro_f1(truth, predicted, EXPRESSIONS):.4f}")
    print_confusion(truth, predicted)
    if "valence" in rows[0]:
        for column, name in enumerate(("valence", "arousal")):
            values = [float(row[name]) for row in rows]
            ccc = metrics.ccc(values, prediction.va[:, column])
            rmse = metrics.rmse(values, prediction.va[:, column])
            print(f"  {name:<8} CCC {ccc:.4f}  RMSE {rmse:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data")
    parser.add_argument("--weights", type=Path, default=None)
    args = parser.parse_args()
    model = OfflineModel.load(args.weights)
    held_out = model.metadata.get("held_out", {})
    print(
        f"weights: {args.weights or model.WEIGHTS_PATH} ({model.parameter_count} parameters, "
        f"trained {model.metadata.get('date')}, held-out {held_out})"
    )
    for name in ("ferplus", "affectnet_val"):
        score_set(model, args.data / name)


if __name__ == "__main__":
    main()
