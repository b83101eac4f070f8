"""Seconds and peak memory of a FEID export as the dataset grows.

Usage (from the repository root, against the configured database)::

    python bench/export_scale.py [--sizes 10000 100000] [--formats llava] [--keep]

For each size, seeds a dataset ``bench-export-N`` of N curated images if it is not
there yet (image rows with referenced, non-existent files; one accepted machine
annotation each; a third with an imported expression; one in a hundred reviewed),
then exports it in a fresh child process (images referenced, zip archive with
manifest and card) and prints the wall time, the CPU time it used and the
child's peak resident memory (``ru_maxrss``), so the figures of the sizes can be
compared. The seeded
datasets are deleted at the end unless ``--keep``. Asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The script is run from a checkout, so the repository root goes on the path.
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "seke_app.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402

from review.models import ReviewDecision, ReviewTask  # noqa: E402
from seke_app.exports.services import ExportOptions, export_create, export_run  # noqa: E402
from seke_app.models import Annotation, Dataset, FaceImage, GenerationRun  # noqa: E402
from seke_app.models.exports import Export  # noqa: E402
from seke_app.runs.prompts import prompt_version_active  # noqa: E402

BATCH = 5000
EXPRESSIONS = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger")
AUS = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 24, 25, 26)


def _image(dataset: Dataset, n: int, i: int) -> FaceImage:
    sha = hashlib.sha256(f"bench-export-{n}-{i}".encode()).hexdigest()
    return FaceImage(
        dataset=dataset,
        sha256=sha,
        file=f"faces/{sha[:2]}/{sha}.jpg",
        image_format="JPEG",
        width=224,
        height=224,
        original_name=f"img{i:07d}.jpg",
        subject=f"s{i % 997}",
        split="train" if i % 10 else "test",
        known_expression=EXPRESSIONS[i % 7] if i % 3 == 0 else None,
    )


def _annotation(run: GenerationRun, image: FaceImage, i: int) -> Annotation:
    expression = EXPRESSIONS[(i * 7 + 3) % 7]
    return Annotation(
        run=run,
        image=image,
        prompt_version=run.prompt_version,
        expression=expression,
        expression_votes={expression: 4, "neutral": 1},
        expression_confidence=0.7 + (i % 30) / 100,
        valence=((i % 200) - 100) / 100,
        arousal=((i * 13 % 200) - 100) / 100,
        va_confidence=0.8,
        aus={str(au): (i + au) % 4 == 0 for au in AUS},
        au_confidence=0.75,
        confidence=0.75,
        n_samples=5,
        n_valid=5,
    )


def seed(n: int) -> Dataset:
    name = f"bench-export-{n}"
    existing = Dataset.objects.filter(name=name).first()
    if existing is not None and existing.images.count() == n:
        return existing
    if existing is not None:
        drop(existing)
    started = time.perf_counter()
    reviewer, _ = User.objects.get_or_create(username="bench-reviewer")
    with transaction.atomic():
        dataset = Dataset.objects.create(name=name)
        run = GenerationRun.objects.create(
            dataset=dataset,
            backend="offline",
            model_name="bench",
            prompt_version=prompt_version_active(),
            status=GenerationRun.Status.COMPLETED,
        )
        for start in range(0, n, BATCH):
            images = FaceImage.objects.bulk_create(
                [_image(dataset, n, i) for i in range(start, min(start + BATCH, n))]
            )
            annotations = Annotation.objects.bulk_create(
                [_annotation(run, image, start + k) for k, image in enumerate(images)]
            )
            reviewed = annotations[::100]
            tasks = ReviewTask.objects.bulk_create(
                [ReviewTask(annotation=a, priority=0.5, status="done") for a in reviewed]
            )
            ReviewDecision.objects.bulk_create(
                [
                    ReviewDecision(
                        task=task,
                        annotation=a,
                        image_id=a.image_id,
                        reviewer=reviewer,
                        action="correct",
                        expression="contempt",
                        valence=-0.5,
                        arousal=0.5,
                        aus={"12": True, "14": True},
                    )
                    for task, a in zip(tasks, reviewed, strict=True)
                ]
            )
    print(f"seeded {name}: {n} images in {time.perf_counter() - started:.1f} s", flush=True)
    return dataset


def drop(dataset: Dataset) -> None:
    Export.objects.filter(dataset=dataset).delete()
    # Deleting the run first lets its annotations (and their tasks) cascade in bulk.
    GenerationRun.objects.filter(dataset=dataset).delete()
    dataset.delete()


def export_once(name: str, formats: tuple[str, ...]) -> dict[str, float]:
    """Run one export in this process; report time and this process's peak memory."""
    dataset = Dataset.objects.get(name=name)
    options = ExportOptions(formats=formats)
    export = export_create(dataset=dataset, kind="feid", options=options, enqueue=False)
    started, cpu_started = time.perf_counter(), time.process_time()
    export_run(export_id=export.id)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    export.refresh_from_db()
    if export.status != Export.Status.DONE:
        raise SystemExit(f"export {export.status}: {export.error}")
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    path = export.absolute_path()
    assert path is not None
    size = path.stat().st_size
    path.unlink()
    return {
        "records": export.n_written,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_mb": peak_kb / 1024,
        "file_mb": size / 1024 / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--formats", nargs="+", default=["llava"])
    parser.add_argument("--keep", action="store_true", help="keep the seeded datasets")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(export_once(args.child, tuple(args.formats))))
        return
    call_command("migrate", verbosity=0)
    datasets = [seed(n) for n in args.sizes]
    print(
        f"{'images':>8} {'records':>8} {'seconds':>8} {'CPU s':>8} {'images/s':>9}"
        f" {'peak MB':>8} {'file MB':>8}"
    )
    for n, dataset in zip(args.sizes, datasets, strict=True):
        child = subprocess.run(
            [sys.executable, __file__, "--child", dataset.name, "--formats", *args.formats],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"{n:>8} {result['records']:>8} {result['seconds']:>8.2f}"
            f" {result['cpu_seconds']:>8.2f} {n / result['seconds']:>9.0f}"
            f" {result['peak_mb']:>8.1f} {result['file_mb']:>8.1f}",
            flush=True,
        )
    if not args.keep:
        for dataset in datasets:
            drop(dataset)


if __name__ == "__main__":
    main()
