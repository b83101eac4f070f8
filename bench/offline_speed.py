"""Images per second of the offline annotator's batched numpy inference on one core.

Usage (from the repository root)::

    python bench/offline_speed.py [--batch 256] [--repeats 5] [--weights PATH]

Prints a figure and asserts nothing. BLAS is limited to one thread before numpy
is imported, because a library's thread count is fixed when it is loaded.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The script is run from a checkout, so the repository root goes on the path.
sys.path.insert(0, str(REPO))

from seke_app.engine.offline.model import OfflineModel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--weights", type=Path, default=None)
    args = parser.parse_args()
    model = OfflineModel.load(args.weights)
    size = model.input_size
    # Synthetic faces are enough: the cost of the network does not depend on content.
    batch = np.random.default_rng(0).random((args.batch, size, size), dtype=np.float32)
    model.predict_arrays(batch[:8])
    timings = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        model.predict_arrays(batch)
        timings.append(time.perf_counter() - started)
    best, median = min(timings), float(np.median(timings))
    print(f"batch {args.batch} of {size}x{size}, {args.repeats} repeats, one BLAS thread:")
    print(f"  best   {args.batch / best:7.0f} images/s")
    print(f"  median {args.batch / median:7.0f} images/s")


if __name__ == "__main__":
    main()
