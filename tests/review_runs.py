"""A run whose every annotation awaits review, for the review pages' browser tests.

Drawn faces are imported as a dataset and annotated by the offline annotator in a
run processed here by a burst rq worker (``work_in_process``; the test needs
``django_db(transaction=True)`` and its own emptied "generation" queue). The
review threshold is 1.0, so every annotation is flagged and gets a review task.
"""

from __future__ import annotations

from pathlib import Path

from review.models import ReviewTask
from seke_app.datasets.services import dataset_import
from seke_app.engine.uamc import UAMCParams
from seke_app.models import Dataset, GenerationRun
from seke_app.runs.services import run_create
from tests.conftest import draw_face
from tests.workers import work_in_process


def reviewable_run(
    tmp_path: Path,
    n: int = 6,
    *,
    known_expression: str | None = None,
    au_vocabulary: str | None = None,
) -> GenerationRun:
    """A completed run over ``n`` drawn faces (every other one smiling), all awaiting review.

    With ``known_expression`` every face comes with that expression as its dataset label.
    """
    src = tmp_path / "faces"
    src.mkdir()
    for i in range(n):
        (src / f"face{i}.png").write_bytes(draw_face((160, 160), seed=i, smile=i % 2 == 0))
    if known_expression is not None:
        rows = "".join(f"face{i}.png,{known_expression}\n" for i in range(n))
        (src / "manifest.csv").write_text("file,expression\n" + rows)
    dataset_import(path=src, dataset_name="faces", au_vocabulary=au_vocabulary)
    run = run_create(
        dataset=Dataset.objects.get(name="faces"),
        backend="offline",
        params=UAMCParams(review_threshold=1.0),
        concurrency=1,
        audit_share=0.0,
    )
    work_in_process("generation")
    run.refresh_from_db()
    assert run.status == GenerationRun.Status.COMPLETED
    assert ReviewTask.objects.filter(status="open").count() == n
    return run
