"""Does learning from reviews help? The feedback loop on real data, offline annotator.

    python bench/feedback_loop.py --data ../shared/data [--datasets ferplus affectnet_val]
                                  [--review-share 0.3] [--limit N]

For each dataset: annotate every image with SV-UAMC on the offline annotator; let
the lowest-confidence ``--review-share`` of them be "reviewed", with the dataset's
own labels standing in for the experts; derive the next version's recalibration
from those corrections (``seke_app.engine.feedback.recalibrate``, the same
function the prompt-version page uses); re-annotate the images nobody reviewed
with it. Prints the accuracy on the not-reviewed images before and after, and how
many of them are flagged before and after. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from seke_app.engine.evaluate import EvalItem, read_manifest  # noqa: E402
from seke_app.engine.feedback import Correction, recalibrate  # noqa: E402
from seke_app.engine.offline.backend import OfflineBackend  # noqa: E402
from seke_app.engine.offline.model import OfflineModel  # noqa: E402
from seke_app.engine.types import AnnotationRequest  # noqa: E402
from seke_app.engine.uamc import UAMCParams, UAMCResult, run_uamc  # noqa: E402
from seke_app.engine.vocab import DEFAULT_VOCABULARY  # noqa: E402


def annotate(backend: OfflineBackend, items: Sequence[EvalItem]) -> list[UAMCResult]:
    params = UAMCParams()
    results = []
    for number, item in enumerate(items, start=1):
        request = AnnotationRequest(item.image_bytes, DEFAULT_VOCABULARY, image_id=item.name)
        results.append(run_uamc(backend, request, params))
        if number % 200 == 0:
            print(f"  {number}/{len(items)}", file=sys.stderr)
    return results


def accuracy(items: Sequence[EvalItem], results: Sequence[UAMCResult]) -> float:
    right = sum(
        r.answer is not None and r.answer.expression == i.expression
        for i, r in zip(items, results, strict=True)
    )
    return right / len(items) if items else float("nan")


def correction(item: EvalItem, result: UAMCResult) -> Correction:
    return Correction(
        image_ref=item.name,
        machine_expression=result.answer.expression if result.answer else None,
        human_expression=item.expression,
        expression_confidence=result.confidence.expression,
        # SV-UAMC's masses: the summed probabilities, or whole votes where the
        # samples carried none.
        votes=dict(result.uncertainty.expression.mass),
    )


def run(dataset: Path, model: OfflineModel, share: float, limit: int) -> None:
    items = read_manifest(dataset / "manifest.csv", dataset)
    items = [i for i in items if i.expression in DEFAULT_VOCABULARY.expressions]
    if limit:
        items = items[:limit]
    print(f"\n## {dataset.name}: {len(items)} images")
    before = annotate(OfflineBackend(model), items)
    order = sorted(range(len(items)), key=lambda k: before[k].overall_confidence)
    reviewed = set(order[: round(share * len(items))])
    rest = [k for k in range(len(items)) if k not in reviewed]
    calibration = recalibrate(
        [correction(items[k], before[k]) for k in sorted(reviewed)], DEFAULT_VOCABULARY
    )
    print(f"recalibration fitted on {len(reviewed)} reviewed images: {calibration}")
    rest_items = [items[k] for k in rest]
    after = annotate(OfflineBackend(model, calibration=calibration), rest_items)
    rest_before = [before[k] for k in rest]
    print("| on the not-reviewed images | before | after |")
    print("|---|---|---|")
    print(
        f"| expression accuracy | {accuracy(rest_items, rest_before):.3f}"
        f" | {accuracy(rest_items, after):.3f} |"
    )
    print(
        f"| flagged for review | {sum(r.flagged for r in rest_before)}"
        f" | {sum(r.flagged for r in after)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--datasets", nargs="+", default=["ferplus", "affectnet_val"])
    parser.add_argument("--review-share", type=float, default=0.3)
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    model = OfflineModel.load()
    for name in args.datasets:
        run(args.data / name, model, args.review_share, args.limit)


if __name__ == "__main__":
    main()
