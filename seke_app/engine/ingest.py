"""Reading face images and their manifest from a folder tree or a zip file.

Plain Python (Pillow, csv, zipfile): no Django here, so the rules for what is a
valid image or label can be used and tested on their own. The service in
``seke_app.datasets.services`` stores what this module accepts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps, UnidentifiedImageError

from seke_app.engine.vocab import AU_NAMES, EXPRESSIONS, Vocabulary

# Formats a face photo reasonably comes in; anything else (GIF animations, TIFF
# scans, PDFs renamed to .jpg) is refused rather than guessed at.
ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
MANIFEST_NAME = "manifest.csv"
EXIF_ORIENTATION = 0x0112

# Common spellings of the expression names in other datasets' label files.
EXPRESSION_SYNONYMS = {
    "happy": "happiness",
    "sad": "sadness",
    "surprised": "surprise",
    "fearful": "fear",
    "afraid": "fear",
    "disgusted": "disgust",
    "angry": "anger",
    "contemptuous": "contempt",
    "calm": "neutral",
}
KNOWN_COLUMNS = {"file", "expression", "valence", "arousal", "subject", "split"}
AU_COLUMN = re.compile(r"^au_?(\d+)$", re.IGNORECASE)


class Rejected(Exception):
    """A file or a manifest row that cannot be imported; the message says why."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(detail)
        self.category = category
        self.detail = detail


class ManifestError(Exception):
    """The manifest as a whole is unusable: nothing is imported."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class CheckedImage:
    """An image that passed every check, ready to be stored."""

    data: bytes
    sha256: str
    image_format: str
    extension: str
    width: int
    height: int


@dataclass(frozen=True)
class RowLabels:
    expression: str | None = None
    valence: float | None = None
    arousal: float | None = None
    aus: dict[int, bool] | None = None
    subject: str = ""
    split: str = ""


@dataclass
class Manifest:
    rows: dict[str, RowLabels]
    rejected: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def check_image(data: bytes, limits: ImageLimits) -> CheckedImage:
    """Validate one image file; return what to store or raise ``Rejected``."""
    if not data:
        raise Rejected("empty file", "the file is empty")
    if len(data) > limits.max_bytes:
        raise Rejected(
            "too large",
            f"the file is {len(data) / 1e6:.1f} MB, over the limit of"
            f" {limits.max_bytes / 1e6:.1f} MB",
        )
    try:
        with Image.open(io.BytesIO(data)) as probe:
            image_format = probe.format or ""
            width, height = probe.size
            if image_format not in ALLOWED_FORMATS:
                allowed = ", ".join(sorted(ALLOWED_FORMATS))
                raise Rejected(
                    "unsupported format",
                    f"format {image_format or 'unknown'} is not allowed (allowed: {allowed})",
                )
            # Checked before any pixel is decoded, so a decompression bomb costs nothing.
            if width * height > limits.max_pixels:
                raise Rejected(
                    "too many pixels",
                    f"{width}x{height} pixels is over the limit of {limits.max_pixels:,}"
                    " (possible decompression bomb)",
                )
            probe.load()
            orientation = probe.getexif().get(EXIF_ORIENTATION, 1)
            oriented = ImageOps.exif_transpose(probe) if orientation != 1 else None
    except Rejected:
        raise
    except UnidentifiedImageError:
        raise Rejected("not an image", "not a readable image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise Rejected("corrupt or truncated", f"corrupt or truncated image ({exc})") from None
    if oriented is not None:
        # The camera's rotation is applied once here, so that every later reader
        # (browser, model, export) sees the face upright without reading EXIF.
        data = _encode(oriented, image_format)
        width, height = oriented.size
    return CheckedImage(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        image_format=image_format,
        extension=ALLOWED_FORMATS[image_format],
        width=width,
        height=height,
    )


def _encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format=image_format)
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# Sources: a folder tree or a zip file, yielding (relative name, bytes loader).


@dataclass(frozen=True)
class SourceEntry:
    name: str
    size: int


class Source:
    """A folder tree or a zip file of images (and maybe a manifest)."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise ManifestError(f"{path} does not exist")
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        # A zip made by compressing a folder holds everything under that folder's
        # name; names (and the manifest's paths) are taken relative to it.
        self._prefix = ""
        if path.is_file():
            if not zipfile.is_zipfile(path):
                raise ManifestError(f"{path} is neither a folder nor a zip file")
            self._zip = zipfile.ZipFile(path)
            self._prefix = _common_folder([n for n in self._zip.namelist() if is_safe_member(n)])

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def entries(self) -> Iterator[SourceEntry | Rejected]:
        """Every image-like entry; unsafe zip entries come back as ``Rejected``."""
        if self._zip is not None:
            for info in self._zip.infolist():
                if info.is_dir():
                    continue
                name = info.filename
                if not is_safe_member(name):
                    yield Rejected("unsafe path", f"{name}: entry escapes the archive's folder")
                    continue
                if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES:
                    yield SourceEntry(name.removeprefix(self._prefix), info.file_size)
            return
        for file in sorted(self.path.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                yield SourceEntry(file.relative_to(self.path).as_posix(), file.stat().st_size)

    def read(self, name: str, max_bytes: int) -> bytes:
        """Read one entry, refusing to inflate more than ``max_bytes`` (zip bombs)."""
        if self._zip is not None:
            with self._zip.open(self._prefix + name) as handle:
                data = handle.read(max_bytes + 1)
        else:
            with (self.path / name).open("rb") as handle:
                data = handle.read(max_bytes + 1)
        return data

    def find_manifest(self) -> str | None:
        """The text of a manifest.csv at the source's top level, if there is one."""
        if self._zip is not None:
            candidate = self._prefix + MANIFEST_NAME
            if candidate in self._zip.namelist():
                return self._zip.read(candidate).decode("utf-8-sig")
            return None
        manifest = self.path / MANIFEST_NAME
        return manifest.read_text(encoding="utf-8-sig") if manifest.exists() else None


def _common_folder(names: list[str]) -> str:
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1 and all("/" in name for name in names):
        return tops.pop() + "/"
    return ""


def is_safe_member(name: str) -> bool:
    """True when a zip entry name stays inside the folder it is extracted to."""
    if not name or name.startswith(("/", "\\")) or "\\" in name:
        return False
    path = PurePosixPath(name)
    if path.is_absolute() or ":" in path.parts[0]:
        return False
    return ".." not in path.parts


# ---------------------------------------------------------------------------
# The manifest.


def parse_manifest(text: str, vocabulary: Vocabulary) -> Manifest:
    """Parse a manifest CSV; bad rows are reported, a bad header refuses everything."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "file" not in header:
        raise ManifestError("the manifest has no 'file' column (the header must name it)")
    au_columns, warnings = _classify_columns(header, vocabulary)
    manifest = Manifest(rows={}, warnings=warnings)
    for line, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        name = normalise_name(row.get("file", ""))
        if not name:
            manifest.rejected[f"manifest line {line}"] = "the 'file' cell is empty"
            continue
        if name in manifest.rows or name in manifest.rejected:
            manifest.rejected[name] = f"listed twice in the manifest (again on line {line})"
            manifest.rows.pop(name, None)
            continue
        try:
            manifest.rows[name] = parse_row(row, au_columns, vocabulary)
        except Rejected as exc:
            manifest.rejected[name] = f"manifest line {line}: {exc.detail}"
    return manifest


def _classify_columns(
    header: list[str], vocabulary: Vocabulary
) -> tuple[dict[str, int], list[str]]:
    au_columns: dict[str, int] = {}
    ignored: list[str] = []
    warnings: list[str] = []
    for column in header:
        match = AU_COLUMN.match(column)
        if match:
            au = int(match.group(1))
            if au not in AU_NAMES:
                warnings.append(f"column {column}: AU{au} is not a known FACS action unit; ignored")
            elif au not in vocabulary.aus:
                warnings.append(
                    f"column {column}: AU{au} is not in this dataset's AU vocabulary; ignored"
                )
            else:
                au_columns[column] = au
        elif column not in KNOWN_COLUMNS:
            ignored.append(column)
    if ignored:
        warnings.append(f"columns ignored: {', '.join(ignored)}")
    return au_columns, warnings


def normalise_name(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).as_posix().lstrip("./") if name else ""


def parse_row(row: dict[str, str], au_columns: dict[str, int], vocabulary: Vocabulary) -> RowLabels:
    expression = _parse_expression(row.get("expression", ""), vocabulary)
    valence = _parse_unit_interval(row.get("valence", ""), "valence")
    arousal = _parse_unit_interval(row.get("arousal", ""), "arousal")
    if (valence is None) != (arousal is None):
        raise Rejected("bad label", "valence and arousal must be given together")
    aus: dict[int, bool] = {}
    for column, au in au_columns.items():
        cell = row.get(column, "")
        if cell == "":
            continue
        if cell not in {"0", "1"}:
            raise Rejected("bad label", f"{column} must be 0 or 1, not {cell!r}")
        aus[au] = cell == "1"
    return RowLabels(
        expression=expression,
        valence=valence,
        arousal=arousal,
        aus=aus or None,
        subject=row.get("subject", "")[:100],
        split=row.get("split", "")[:50],
    )


def _parse_expression(cell: str, vocabulary: Vocabulary) -> str | None:
    if not cell:
        return None
    value = EXPRESSION_SYNONYMS.get(cell.lower(), cell.lower())
    if value not in vocabulary.expressions:
        known = ", ".join(e for e in EXPRESSIONS if e in vocabulary.expressions)
        raise Rejected("bad label", f"expression {cell!r} is not one of: {known}")
    return value


def _parse_unit_interval(cell: str, grain: str) -> float | None:
    if not cell:
        return None
    try:
        value = float(cell)
    except ValueError:
        raise Rejected("bad label", f"{grain} {cell!r} is not a number") from None
    if not -1.0 <= value <= 1.0 or value != value:
        raise Rejected("bad label", f"{grain} {value} is outside [-1, 1]")
    return value
