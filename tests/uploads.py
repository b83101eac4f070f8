"""Zip archives of drawn faces for the upload tests, and what an import leaves on disk."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from seke_app.models.datasets import imports_dir
from tests.conftest import draw_face


def zip_bytes(entries: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def faces_zip(n: int = 3, *, manifest: str | bytes | None = None) -> bytes:
    """``n`` drawn faces and one broken file under ``set/``, with a manifest if given."""
    entries: dict[str, bytes | str] = {f"set/{i}.png": draw_face(seed=i) for i in range(n)}
    entries["set/broken.png"] = b"not an image"
    if manifest is not None:
        entries["set/manifest.csv"] = manifest
    return zip_bytes(entries)


def left_in_imports() -> list[Path]:
    """Every file left in the imports folder."""
    root = imports_dir()
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
