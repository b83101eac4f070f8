"""How the offline annotator's face finder frames faces, measured on the shared data.

Usage (from the repository root)::

    python bench/face_framing.py [--data ../shared/data] [--limit 400]

Two things, for ``seke_app/engine/offline/face.py``:

* the framing the network learnt: the share of the image side that the largest
  face box fills in the training faces (FER+ faces upscaled 3x first, since the
  finder skips 48-pixel images), which sets ``FRAME_SCALE``;
* what ``face_square`` does with the evaluation sets and the shipped demo photos:
  how many images it reads as face crops (centre square, as the network learnt)
  and how many it cuts a face out of, and the time per image.

It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seke_app.engine.offline.face import FRAME_SCALE, face_square, find_face  # noqa: E402
from seke_app.engine.offline.model import to_gray  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"
DEMO = REPO / "seke_app" / "demo" / "faces"


def _images(folder: Path, limit: int | None) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    return files[:limit] if limit else files


def box_shares(folder: Path, limit: int, upscale: int) -> tuple[list[float], int]:
    shares, missed = [], 0
    for path in _images(folder, limit):
        gray = to_gray(Image.open(path))
        if upscale > 1:
            gray = gray.resize((gray.width * upscale, gray.height * upscale))
        box = find_face(gray)
        if box is None:
            missed += 1
        else:
            shares.append(max(box[2], box[3]) / min(gray.size))
    return shares, missed


def outcomes(folder: Path, limit: int | None) -> tuple[Counter[str], float, int]:
    counts: Counter[str] = Counter()
    files = _images(folder, limit)
    started = time.perf_counter()
    for path in files:
        _, framing = face_square(Image.open(io.BytesIO(path.read_bytes())))
        counts["cut out" if framing.cropped else framing.note] += 1
    return counts, (time.perf_counter() - started) / max(len(files), 1) * 1000, len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=400, help="training images per set")
    args = parser.parse_args()
    print("# Face framing\n\n## The training faces' framing\n")
    print("| set | images | face found | box side / image side: median (10%-90%) |")
    print("|---|---|---|---|")
    for name, upscale in (("ferplus_train", 3), ("affectnet_train", 1)):
        shares, missed = box_shares(args.data / name / "images", args.limit, upscale)
        if shares:
            q = statistics.quantiles(shares, n=10)
            spread = f"{statistics.median(shares):.3f} ({q[0]:.3f}-{q[-1]:.3f})"
        else:
            spread = "n/a"
        print(f"| {name} | {len(shares) + missed} | {len(shares)} | {spread} |")
    print(f"\nFRAME_SCALE in use: {FRAME_SCALE} (1 / median share)\n")
    print("## What face_square does\n")
    print("| set | images | outcomes | ms/image |")
    print("|---|---|---|---|")
    for name, folder in (
        ("affectnet_val", args.data / "affectnet_val" / "images"),
        ("ckplus_facs", args.data / "ckplus_facs" / "images"),
        ("ferplus", args.data / "ferplus" / "images"),
        ("demo photos", DEMO),
    ):
        counts, ms, n = outcomes(folder, None)
        listed = "; ".join(f"{note}: {k}" for note, k in counts.most_common())
        print(f"| {name} | {n} | {listed} | {ms:.1f} |")


if __name__ == "__main__":
    main()
