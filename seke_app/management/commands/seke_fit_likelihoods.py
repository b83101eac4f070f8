"""``manage.py seke_fit_likelihoods --data DIR``: refit the offline annotator's fusion likelihoods.

Reads ``DIR/affectnet_train`` (expression, valence, arousal and the faces the
training script held out) and the expression column of ``DIR/ferplus_train``
(to repeat the training script's held-out draw), runs the offline network on
the held-out faces, and writes ``seke_app/engine/likelihoods.json``
(``engine/likelihoods.py`` defines every number in it). It prints what changed
against the file already there, and leaves the file alone when nothing did.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from PIL import Image

from seke_app.engine.likelihoods import (
    FIT_COMMAND,
    LIKELIHOODS_PATH,
    Likelihoods,
    fit_likelihoods,
    held_out_indices,
)
from seke_app.engine.offline.backend import DEFAULT_MODEL_NAME
from seke_app.engine.offline.face import face_square
from seke_app.engine.offline.model import OfflineModel, OfflineWeightsError
from seke_app.engine.vocab import EXPRESSIONS

SOURCE = (
    "affectnet_train: AffectNet validation faces disjoint from affectnet_val, "
    "expression, valence and arousal by AffectNet's annotators (research use only)"
)
AU_SOURCE = (
    "seke_app.engine.knowledge.AU_RATES (CK+ peak frames of ckplus_facs), "
    "Laplace-smoothed by likelihoods.au_probability; not refitted here"
)


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise CommandError(f"{path} not found")
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _va_rows(rows: list[dict[str, str]]) -> list[tuple[str, float, float]]:
    try:
        return [(r["expression"], float(r["valence"]), float(r["arousal"])) for r in rows]
    except (KeyError, ValueError) as exc:
        raise CommandError(
            f"every affectnet_train row needs expression, valence and arousal ({exc})"
        ) from None


def _face(path: Path) -> Image.Image:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        image.load()
        return face_square(image)[0]


def _counts(expressions: list[str]) -> dict[str, int]:
    return {e: expressions.count(e) for e in EXPRESSIONS if e in expressions}


def describe_changes(old: Likelihoods | None, new: Likelihoods) -> list[str]:
    """One line per fitted part: its new value, and the old one where it differs."""
    lines = []
    for expression, mixture in new.va.items():
        v, a = mixture.mean()
        text = (
            f"P(VA | {expression}): {mixture.n} faces, {len(mixture.components)} components, "
            f"mean ({v:+.3f}, {a:+.3f})"
        )
        before = old.va.get(expression) if old else None
        if before is None:
            text += " (new)"
        elif before != mixture:
            ov, oa = before.mean()
            text += (
                f" (was {before.n} faces, {len(before.components)} components, "
                f"mean ({ov:+.3f}, {oa:+.3f}))"
            )
        lines.append(text)
    gain = new.head.gain
    head = f"VA head: {new.head.n} held-out faces, gain {[list(row) for row in gain]}"
    if old and old.head != new.head:
        head += f" (was {old.head.n} faces, gain {[list(row) for row in old.head.gain]})"
    lines.append(head)
    weight = f"image weight: {new.image_weight}"
    if old and old.image_weight != new.image_weight:
        weight += f" (was {old.image_weight})"
    lines.append(weight)
    return lines


def _same_fit(old: Likelihoods | None, new: Likelihoods) -> bool:
    if old is None:
        return False
    a, b = old.to_json(), new.to_json()
    a["metadata"] = {k: v for k, v in a["metadata"].items() if k != "date"}
    b["metadata"] = {k: v for k, v in b["metadata"].items() if k != "date"}
    return a == b


class Command(BaseCommand):
    help = (
        "Refit the offline annotator's fusion likelihoods (P(VA | expression), the VA "
        "head's statistics, the image's weight) on the training data and print what changed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--data",
            type=Path,
            required=True,
            help="folder holding affectnet_train/ and ferplus_train/ (e.g. ../shared/data)",
        )
        parser.add_argument("--weights", type=Path, default=None, help="offline weights file")
        parser.add_argument("--out", type=Path, default=LIKELIHOODS_PATH)

    def handle(self, *args: Any, **options: Any) -> None:
        data: Path = options["data"]
        affectnet = _rows(data / "affectnet_train" / "manifest.csv")
        ferplus = _rows(data / "ferplus_train" / "manifest.csv")
        va_rows = _va_rows(affectnet)
        try:
            model = OfflineModel.load(options["weights"])
        except OfflineWeightsError as exc:
            raise CommandError(str(exc)) from None
        labels = {
            "ferplus_train": [r["expression"] for r in ferplus],
            "affectnet_train": [e for e, _, _ in va_rows],
        }
        held = held_out_indices(labels, int(model.metadata.get("seed", 0)))["affectnet_train"]
        self._check_held_out(model.metadata, len(held))
        faces = [_face(data / "affectnet_train" / affectnet[i]["file"]) for i in held]
        prediction = model.predict(faces)
        metadata = {
            "source": SOURCE,
            "faces": _counts(labels["affectnet_train"]),
            "held_out_faces": _counts([labels["affectnet_train"][i] for i in held]),
            "weights": {
                "name": str(model.metadata.get("name", DEFAULT_MODEL_NAME)),
                "date": model.metadata.get("date"),
            },
            "au_rates": AU_SOURCE,
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": FIT_COMMAND,
        }
        fit = fit_likelihoods(va_rows, held.tolist(), prediction.probs, prediction.va, metadata)
        # Through JSON and back, so that it compares with the file at the file's precision.
        fitted = Likelihoods.from_json(fit.to_json())
        out: Path = options["out"]
        old = Likelihoods.load(out) if out.is_file() else None
        for line in describe_changes(old, fitted):
            self.stdout.write(line)
        if _same_fit(old, fitted):
            self.stdout.write(f"unchanged: {out} left as it was")
            return
        out.write_text(json.dumps(fitted.to_json(), indent=1) + "\n")
        self.stdout.write(f"wrote {out}")

    def _check_held_out(self, metadata: dict[str, Any], found: int) -> None:
        recorded = metadata.get("training_data", {}).get("affectnet_train", {}).get("held_out")
        if recorded is not None and recorded != found:
            raise CommandError(
                f"the held-out draw gives {found} AffectNet faces, the weights' metadata "
                f"{recorded}: these are not the data the weights were trained on"
            )
