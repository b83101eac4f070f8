"""Reading face images and their manifest from a folder tree or a zip file.

Plain Python (Pillow, csv, zipfile): no Django here, so the rules for what is a
valid image or label can be used and tested on their own. The service in
``seke_app.datasets.services`` stores what this module accepts.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
import zipfile
import zlib
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
MIB = 1024 * 1024
# The most of a manifest that is read. A zip holds a manifest compressed, often a
# thousand to one, so neither the upload's size nor the entry's declared size bounds
# what reading it costs. Parsing keeps a few hundred bytes per row however short
# the row, so the limit bounds the parser's memory too. 32 MiB hold some 400,000
# rows with 17 AU columns; a larger set is imported in parts.
MAX_MANIFEST_BYTES = 32 * MIB

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
    """A file or a manifest row that cannot be imported; the message says why.

    ``name`` is the file's full name in its source, when the rejection is of a
    source entry (the detail starts with it too, but a name may hold a colon).
    """

    def __init__(self, category: str, detail: str, *, name: str = "") -> None:
        super().__init__(detail)
        self.category = category
        self.detail = detail
        self.name = name


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


@dataclass(frozen=True, slots=True)
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


def mib(n_bytes: int) -> str:
    """A size in mebibytes, the unit the limits are set in (SEKE_MAX_IMAGE_MB=20 is 20 MiB)."""
    value = n_bytes / MIB
    text = f"{value:.2f}".rstrip("0").rstrip(".") if value >= 1 else f"{value:.2g}"
    return f"{text} MiB"


def size_over_limit(size: int, limit: int) -> str:
    """ "1.5 MiB, over the limit of 1 MiB"; in bytes where the two would read the same."""
    if mib(size) == mib(limit):
        return f"{size:,} bytes, over the limit of {limit:,} bytes"
    return f"{mib(size)}, over the limit of {mib(limit)}"


def check_image(data: bytes, limits: ImageLimits) -> CheckedImage:
    """Validate one image file; return what to store or raise ``Rejected``."""
    if not data:
        raise Rejected("empty file", "the file is empty")
    if len(data) > limits.max_bytes:
        raise Rejected("too large", f"the file is {size_over_limit(len(data), limits.max_bytes)}")
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
    except Image.DecompressionBombError as exc:
        # Pillow's own limit, checked as the header is read, so no size reached the
        # check above: an image this large is a bomb, not a damaged file.
        raise Rejected(
            "too many pixels",
            f"over the limit of {limits.max_pixels:,} pixels (a decompression bomb: {exc})",
        ) from None
    except UnidentifiedImageError:
        raise Rejected("not an image", "not a readable image file") from None
    except (OSError, SyntaxError, ValueError) as exc:
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


# What reading a damaged zip entry raises: a bad CRC or header, bad deflate data,
# an entry shorter than its header says.
_ZIP_DATA_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError)
# What reading an entry SEKE cannot decode raises: encryption, an unknown compression.
_ZIP_UNSUPPORTED = (RuntimeError, NotImplementedError)


class Source:
    """A folder tree or a zip file of images (and maybe a manifest).

    ``label`` names the source in messages (default: its path); the import page
    passes the uploaded file's name rather than where the server keeps it.
    """

    def __init__(self, path: Path, *, label: str | None = None) -> None:
        self.label = label or str(path)
        if not path.exists():
            raise ManifestError(f"{self.label} does not exist")
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        # A zip made by compressing a folder holds everything under that folder's
        # name; names (and the manifest's paths) are taken relative to it.
        self._prefix = ""
        if path.is_file():
            if not zipfile.is_zipfile(path):
                raise ManifestError(f"{self.label} is neither a folder nor a zip file")
            try:
                self._zip = zipfile.ZipFile(path)
            except (*_ZIP_DATA_ERRORS, ValueError) as exc:
                raise ManifestError(f"{self.label} is a damaged zip file: {exc}") from None
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
                    yield Rejected(
                        "unsafe path", f"{name}: entry escapes the archive's folder", name=name
                    )
                    continue
                if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES:
                    yield SourceEntry(name.removeprefix(self._prefix), info.file_size)
            return
        for file in sorted(self.path.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                yield SourceEntry(file.relative_to(self.path).as_posix(), file.stat().st_size)

    def read(self, name: str, max_bytes: int) -> bytes:
        """Read one entry, refusing to inflate more than ``max_bytes`` (zip bombs).

        A zip entry that cannot be read raises ``Rejected``; the rest of the zip
        is still read.
        """
        if self._zip is None:
            with (self.path / name).open("rb") as handle:
                return handle.read(max_bytes + 1)
        try:
            with self._zip.open(self._prefix + name) as handle:
                return handle.read(max_bytes + 1)
        except _ZIP_UNSUPPORTED as exc:
            raise Rejected(
                "unsupported zip entry", f"the zip entry cannot be read ({exc})"
            ) from None
        except _ZIP_DATA_ERRORS as exc:
            raise Rejected("corrupt or truncated", f"the zip entry is damaged ({exc})") from None

    def find_manifest(self) -> str | None:
        """The text of a manifest.csv at the source's top level, if there is one.

        At most ``MAX_MANIFEST_BYTES`` are read; a larger, undecodable or
        unreadable manifest raises ``ManifestError``.
        """
        label = f"{MANIFEST_NAME} in {self.label}"
        if self._zip is None:
            manifest = self.path / MANIFEST_NAME
            return read_manifest_file(manifest, label=label) if manifest.is_file() else None
        candidate = self._prefix + MANIFEST_NAME
        if candidate not in self._zip.namelist():
            return None
        limit = MAX_MANIFEST_BYTES
        # The declared size refuses an honest large manifest before any byte is
        # inflated; the bounded read refuses one whose header lies.
        if self._zip.getinfo(candidate).file_size > limit:
            raise ManifestError(_manifest_too_large(label))
        try:
            with self._zip.open(candidate) as handle:
                data = handle.read(limit + 1)
        except (*_ZIP_DATA_ERRORS, *_ZIP_UNSUPPORTED) as exc:
            raise ManifestError(f"{label} cannot be read: {exc}") from None
        if len(data) > limit:
            raise ManifestError(_manifest_too_large(label))
        return decode_manifest(data, label=label)


def read_manifest_file(path: Path, *, label: str | None = None) -> str:
    """The text of a manifest file, read as ``Source.find_manifest`` reads one."""
    label = label or str(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"{label} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(_manifest_too_large(label))
    return decode_manifest(data, label=label)


def _manifest_too_large(label: str) -> str:
    return (
        f"{label} is larger than {mib(MAX_MANIFEST_BYTES)}, the most SEKE reads of a"
        " manifest: import the images in several parts, each with its own manifest"
    )


_SAVE_AS_UTF8 = "save it as UTF-8 (with or without a byte-order mark) and import again"


def decode_manifest(data: bytes, *, label: str) -> str:
    """A manifest's bytes as text: UTF-8, with or without a byte-order mark.

    Anything else is refused with a message naming the file, the encoding
    expected and, where it can be told, the one found. Spreadsheet programs save
    CSV as UTF-16 ("Unicode text") or in a legacy code page such as Windows-1252;
    guessing between code pages would import wrong names silently.
    """
    for bom, name in ((codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if data.startswith(bom):
            raise ManifestError(
                f"{label} is {name} text, not UTF-8 (it starts with a {name} byte-order"
                f" mark): {_SAVE_AS_UTF8}"
            )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError(
            f"{label} is not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} is not"
            f" valid UTF-8 (a file in Latin-1 or Windows-1252 reads like this): {_SAVE_AS_UTF8}"
        ) from None
    if "\0" in text:
        raise ManifestError(
            f"{label} holds NUL bytes, as UTF-16 text without a byte-order mark does:"
            f" {_SAVE_AS_UTF8}"
        )
    return text


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
    """Parse a manifest CSV; bad rows are reported, a bad header refuses everything.

    So does text the csv module cannot split into rows (a field over its size
    limit), since every row after it would be misread.
    """
    reader = csv.DictReader(io.StringIO(text))
    try:
        return _parse_rows(reader, vocabulary)
    except csv.Error as exc:
        # The csv reader's own count: the DictReader's lags a row behind.
        raise ManifestError(f"line {reader.reader.line_num}: {exc}") from None


def _parse_rows(reader: csv.DictReader[str], vocabulary: Vocabulary) -> Manifest:
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
