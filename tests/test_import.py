"""Importing faces: every rejection reason, idempotency, zip safety, labels."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from PIL import Image

from seke_app.datasets.services import ImportRefused, dataset_import
from seke_app.models import Dataset, FaceImage
from tests.conftest import draw_face

pytestmark = pytest.mark.django_db


def write(folder: Path, name: str, data: bytes | str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def media_files() -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def rejection(report: Any, name: str) -> tuple[str, str]:
    for rejected_name, category, detail in report.rejected:
        if rejected_name == name:
            return category, detail
    raise AssertionError(f"{name} was not rejected: {report.rejected}")


def test_it_imports_a_folder_with_labels(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src, "a/one.png", draw_face(seed=1))
    write(src, "a/two.jpg", draw_face(seed=2, image_format="JPEG"))
    write(
        src,
        "manifest.csv",
        "file,expression,valence,arousal,au_12,au_6,subject,split,votes_x\n"
        "a/one.png,happiness,0.7,0.2,1,1,s1,train,3\n"
        "a/two.jpg,sad,,,0,,s2,test,1\n",
    )
    report = dataset_import(path=src, dataset_name="faces")
    assert (report.imported, report.duplicates, report.rejected) == (2, 0, [])
    assert report.labelled == 2
    assert any("votes_x" in w for w in report.warnings)
    one = FaceImage.objects.get(original_name="a/one.png")
    assert one.known_expression == "happiness"
    assert (one.known_valence, one.known_arousal) == (0.7, 0.2)
    assert one.known_aus == {"6": True, "12": True}
    assert (one.subject, one.split, one.width, one.height) == ("s1", "train", 64, 64)
    two = FaceImage.objects.get(original_name="a/two.jpg")
    # A synonym is mapped to the vocabulary; a missing VA stays missing.
    assert (two.known_expression, two.known_valence, two.known_aus) == (
        "sadness",
        None,
        {"12": False},
    )
    assert Path(settings.MEDIA_ROOT, one.file.name).read_bytes() == (src / "a/one.png").read_bytes()
    assert one.file.name == f"faces/{one.sha256[:2]}/{one.sha256}.png"


def test_it_is_idempotent(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(3):
        write(src, f"{i}.png", draw_face(seed=i))
    first = dataset_import(path=src, dataset_name="faces")
    files = sorted(media_files())
    second = dataset_import(path=src, dataset_name="faces")
    assert (first.imported, second.imported, second.duplicates) == (3, 0, 3)
    assert FaceImage.objects.count() == 3
    assert sorted(media_files()) == files


def test_it_stores_identical_bytes_once_across_datasets(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src, "x.png", draw_face(seed=5))
    write(src, "copy-of-x.png", draw_face(seed=5))
    report = dataset_import(path=src, dataset_name="one")
    dataset_import(path=src, dataset_name="two")
    assert (report.imported, report.duplicates) == (1, 1)
    assert FaceImage.objects.count() == 2
    assert len(media_files()) == 1


@pytest.mark.parametrize(
    ("data", "category"),
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not an image"),
        (draw_face(image_format="PNG")[:200], "corrupt or truncated"),
        (draw_face(image_format="GIF"), "unsupported format"),
        (draw_face(image_format="TIFF"), "unsupported format"),
    ],
    ids=["empty", "not-image", "truncated", "gif", "tiff"],
)
def test_it_rejects_bad_files_with_their_reason(tmp_path: Path, data: bytes, category: str) -> None:
    src = tmp_path / "src"
    write(src, "good.png", draw_face(seed=1))
    # GIF and TIFF content under an image suffix that the scanner picks up.
    write(src, "bad.png", data)
    report = dataset_import(path=src, dataset_name="faces")
    assert report.imported == 1
    got_category, detail = rejection(report, "bad.png")
    assert got_category == category
    assert detail.startswith("bad.png: ")
    assert FaceImage.objects.filter(original_name="bad.png").count() == 0
    assert len(media_files()) == 1


def test_it_rejects_files_over_the_size_limit(tmp_path: Path, settings: Any) -> None:
    settings.MAX_IMAGE_BYTES = 1000
    src = tmp_path / "src"
    write(src, "big.png", draw_face((256, 256), seed=3) + b"\0" * 2000)
    report = dataset_import(path=src, dataset_name="faces")
    category, detail = rejection(report, "big.png")
    assert category == "too large" and "over the limit" in detail


def test_it_rejects_decompression_bombs_before_decoding(tmp_path: Path, settings: Any) -> None:
    settings.MAX_IMAGE_PIXELS = 100 * 100
    src = tmp_path / "src"
    buffer = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buffer, format="PNG")  # small file, many pixels
    write(src, "bomb.png", buffer.getvalue())
    report = dataset_import(path=src, dataset_name="faces")
    category, detail = rejection(report, "bomb.png")
    assert category == "too many pixels" and "decompression bomb" in detail


def test_it_applies_exif_orientation(tmp_path: Path) -> None:
    src = tmp_path / "src"
    # Orientation 6 means "rotate 90 degrees clockwise to display": 80x40 becomes 40x80.
    write(src, "rot.jpg", draw_face((80, 40), image_format="JPEG", exif_orientation=6))
    dataset_import(path=src, dataset_name="faces")
    image = FaceImage.objects.get()
    assert (image.width, image.height) == (40, 80)
    with Image.open(Path(settings.MEDIA_ROOT, image.file.name)) as stored:
        assert stored.size == (40, 80)
        assert stored.getexif().get(0x0112, 1) == 1


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("x.png,joy,,", "expression 'joy' is not one of"),
        ("x.png,happiness,1.5,0.1", "valence 1.5 is outside [-1, 1]"),
        ("x.png,happiness,abc,0.1", "valence 'abc' is not a number"),
        ("x.png,happiness,0.5,", "valence and arousal must be given together"),
        ("x.png,happiness,0.5,0.1,2", "au_12 must be 0 or 1"),
    ],
    ids=["expression", "va-range", "va-number", "va-pair", "au-value"],
)
def test_it_rejects_bad_label_rows(tmp_path: Path, row: str, reason: str) -> None:
    src = tmp_path / "src"
    write(src, "x.png", draw_face(seed=1))
    write(src, "y.png", draw_face(seed=2))
    write(src, "manifest.csv", f"file,expression,valence,arousal,au_12\n{row}\ny.png,anger,,\n")
    report = dataset_import(path=src, dataset_name="faces")
    category, detail = rejection(report, "x.png")
    assert category == "bad label"
    assert reason in detail and "manifest line 2" in detail
    assert list(FaceImage.objects.values_list("original_name", flat=True)) == ["y.png"]


def test_it_reports_unknown_au_columns_and_missing_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src, "x.png", draw_face(seed=1))
    write(src, "manifest.csv", "file,au_99,au_11\nx.png,1,1\nghost.png,0,0\n")
    report = dataset_import(path=src, dataset_name="faces")
    assert any("AU99 is not a known FACS action unit" in w for w in report.warnings)
    assert any("AU11 is not in this dataset's AU vocabulary" in w for w in report.warnings)
    assert rejection(report, "ghost.png")[0] == "not found"
    assert FaceImage.objects.get().known_aus is None


def test_it_refuses_a_manifest_without_a_file_column_and_changes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src, "x.png", draw_face(seed=1))
    manifest = write(tmp_path, "labels.csv", "image,expression\nx.png,happiness\n")
    with pytest.raises(ImportRefused, match="no 'file' column"):
        dataset_import(path=src, dataset_name="faces", manifest_path=manifest)
    assert not Dataset.objects.exists()
    assert media_files() == []


def test_it_refuses_a_missing_path_and_an_unknown_vocabulary(tmp_path: Path) -> None:
    with pytest.raises(ImportRefused, match="does not exist"):
        dataset_import(path=tmp_path / "nope", dataset_name="faces")
    with pytest.raises(ImportRefused, match="unknown AU vocabulary"):
        dataset_import(path=tmp_path, dataset_name="faces", au_vocabulary="klingon")
    with pytest.raises(ImportRefused, match="must be a slug"):
        dataset_import(path=tmp_path, dataset_name="my faces")
    assert not Dataset.objects.exists()


def test_it_imports_a_zip_and_refuses_entries_that_escape(tmp_path: Path) -> None:
    archive = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("set/manifest.csv", "file,expression\nimg/a.png,fear\n")
        zf.writestr("set/img/a.png", draw_face(seed=1))
        zf.writestr("set/../../evil.png", draw_face(seed=2))
        zf.writestr("/abs.png", draw_face(seed=3))
    report = dataset_import(path=archive, dataset_name="zipped")
    assert report.imported == 1
    assert FaceImage.objects.get().known_expression == "fear"
    unsafe = [d for _, c, d in report.rejected if c == "unsafe path"]
    assert len(unsafe) == 2
    assert not (tmp_path.parent / "evil.png").exists()


def test_it_leaves_no_orphan_file_when_the_database_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    write(src, "x.png", draw_face(seed=1))

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(FaceImage.objects, "bulk_create", broken)
    with pytest.raises(RuntimeError):
        dataset_import(path=src, dataset_name="faces")
    assert FaceImage.objects.count() == 0
    assert media_files() == []


def test_it_prints_a_summary_from_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], face_bytes: Callable[..., bytes]
) -> None:
    src = tmp_path / "src"
    write(src, "ok.png", face_bytes(seed=1))
    write(src, "bad.png", b"nope")
    call_command("import_faces", str(src), "--dataset", "cli")
    out, err = capsys.readouterr()
    assert "1 imported" in out and "1 rejected" in out
    assert "rejected, not an image: 1" in out
    assert "bad.png: not a readable image file" in err


def test_it_fails_the_command_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="does not exist"):
        call_command("import_faces", str(tmp_path / "missing"), "--dataset", "cli")


# --- Bad manifests, clear messages, nothing created (issue 15, items 11-16) -------------


def zip_of(path: Path, entries: dict[str, bytes | str]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


LATIN1_MANIFEST = "file,expression,subject\nx.png,happiness,Jos\u00e9\n".encode("latin-1")


@pytest.mark.parametrize("where", ["folder", "zip", "option"])
def test_it_refuses_a_manifest_that_is_not_utf8_naming_the_file_and_encoding(
    tmp_path: Path, where: str
) -> None:
    src = tmp_path / "src"
    write(src, "x.png", draw_face(seed=1))
    manifest_path = None
    if where == "folder":
        write(src, "manifest.csv", LATIN1_MANIFEST)
        path = src
    elif where == "zip":
        path = zip_of(
            tmp_path / "faces.zip", {"manifest.csv": LATIN1_MANIFEST, "x.png": draw_face(seed=1)}
        )
    else:
        path, manifest_path = src, write(tmp_path, "labels.csv", LATIN1_MANIFEST)
    with pytest.raises(ImportRefused) as refused:
        dataset_import(path=path, dataset_name="faces", manifest_path=manifest_path)
    message = str(refused.value)
    expected_name = {"folder": "manifest.csv", "zip": "faces.zip", "option": "labels.csv"}[where]
    assert expected_name in message and "not UTF-8" in message
    assert "line 2" in message and "0xe9" in message
    assert not Dataset.objects.exists()
    assert media_files() == []


def test_it_fails_the_command_on_a_non_utf8_manifest_without_a_traceback(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src, "x.png", draw_face(seed=1))
    write(src, "manifest.csv", LATIN1_MANIFEST)
    with pytest.raises(CommandError, match=r"manifest\.csv .*not UTF-8"):
        call_command("import_faces", str(src), "--dataset", "cli")


def test_it_names_a_utf16_manifest_for_what_it_is(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src, "x.png", draw_face(seed=1))
    write(src, "manifest.csv", "file,expression\nx.png,fear\n".encode("utf-16"))
    with pytest.raises(ImportRefused, match="UTF-16"):
        dataset_import(path=src, dataset_name="faces")


@pytest.mark.parametrize("bom", ["", "\ufeff"], ids=["plain", "bom"])
def test_it_reads_a_utf8_manifest_with_or_without_a_bom(tmp_path: Path, bom: str) -> None:
    src = tmp_path / "src"
    write(src, "x.png", draw_face(seed=1))
    write(src, "manifest.csv", (bom + "file,subject\nx.png,Jos\u00e9\n").encode())
    report = dataset_import(path=src, dataset_name="faces")
    assert report.imported == 1 and FaceImage.objects.get().subject == "Jos\u00e9"


def test_it_reads_at_most_the_limit_of_a_zipped_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tracemalloc

    from seke_app.engine import ingest

    monkeypatch.setattr(ingest, "MAX_MANIFEST_BYTES", 64 * 1024)
    # 16 MiB of manifest compress to a few kilobytes: a small upload, a large read.
    bomb = "file,expression\n" + "x.png,happiness\n" * (1 << 20)
    archive = zip_of(tmp_path / "bomb.zip", {"manifest.csv": bomb, "x.png": draw_face(seed=1)})
    assert archive.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(ImportRefused) as refused:
            dataset_import(path=archive, dataset_name="faces")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "manifest.csv in " in str(refused.value)
    assert "larger than 0.062 MiB" in str(refused.value)
    assert peak < 2 * 1024 * 1024
    assert not Dataset.objects.exists()


def test_it_refuses_a_manifest_given_as_an_option_over_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seke_app.engine import ingest

    monkeypatch.setattr(ingest, "MAX_MANIFEST_BYTES", 1024)
    src = tmp_path / "src"
    write(src, "x.png", draw_face(seed=1))
    manifest = write(tmp_path, "labels.csv", "file,expression\n" + "x.png,fear\n" * 200)
    with pytest.raises(ImportRefused, match=r"labels\.csv is larger than"):
        dataset_import(path=src, dataset_name="faces", manifest_path=manifest)


def test_it_refuses_a_manifest_with_a_field_csv_cannot_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src, "x.png", draw_face(seed=1))
    write(src, "manifest.csv", "file,subject\nx.png," + "s" * 200_000 + "\n")
    with pytest.raises(ImportRefused, match="manifest refused: line 2"):
        dataset_import(path=src, dataset_name="faces")
    assert not Dataset.objects.exists()


def test_it_creates_nothing_when_every_file_is_rejected(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src, "a.png", b"not an image")
    write(src, "b.jpg", b"")
    report = dataset_import(path=src, dataset_name="faces")
    assert report.failed()
    assert "nothing was imported" in report.failure() and "2 files" in report.failure()
    assert not Dataset.objects.exists()
    assert media_files() == []


def test_it_fails_the_command_when_nothing_is_imported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    write(src, "a.png", b"not an image")
    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("import_faces", str(src), "--dataset", "cli")
    assert "a.png: not a readable image file" in capsys.readouterr().err
    assert not Dataset.objects.exists()


def test_it_counts_a_reimport_of_known_images_as_no_failure(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src, "a.png", draw_face(seed=1))
    dataset_import(path=src, dataset_name="faces")
    again = dataset_import(path=src, dataset_name="faces")
    assert (again.imported, again.duplicates, again.failed()) == (0, 1, False)


def test_it_shows_sizes_in_mib_as_the_limit_is_set(tmp_path: Path, settings: Any) -> None:
    settings.MAX_IMAGE_BYTES = 1024 * 1024  # SEKE_MAX_IMAGE_MB=1
    src = tmp_path / "src"
    write(src, "big.png", draw_face(seed=1) + b"\0" * (3 * 512 * 1024))
    report = dataset_import(path=src, dataset_name="faces")
    category, detail = rejection(report, "big.png")
    assert category == "too large"
    assert detail.endswith("1.5 MiB, over the limit of 1 MiB (SEKE_MAX_IMAGE_MB)")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def test_it_calls_a_pixel_bomb_a_pixel_bomb(tmp_path: Path) -> None:
    src = tmp_path / "src"
    # 50,000 x 50,000 pixels: over Pillow's own bomb limit, which stops it at open().
    write(src, "bomb.png", _png_header_only(50_000, 50_000))
    report = dataset_import(path=src, dataset_name="faces")
    category, detail = rejection(report, "bomb.png")
    assert category == "too many pixels"
    assert "over the limit of 40,000,000 pixels" in detail and "decompression bomb" in detail


def test_it_lists_a_drive_letter_zip_entry_by_its_full_name(tmp_path: Path) -> None:
    archive = zip_of(
        tmp_path / "faces.zip", {"C:/evil.png": draw_face(seed=2), "ok.png": draw_face(seed=1)}
    )
    report = dataset_import(path=archive, dataset_name="zipped")
    category, detail = rejection(report, "C:/evil.png")
    assert category == "unsafe path" and detail.startswith("C:/evil.png: ")


def test_it_rejects_an_unreadable_zip_entry_and_imports_the_rest(tmp_path: Path) -> None:
    archive = zip_of(
        tmp_path / "faces.zip", {"a.png": draw_face(seed=1), "b.png": draw_face(seed=2)}
    )
    data = bytearray(archive.read_bytes())
    # Corrupt b.png's compressed bytes (its local header comes second).
    offset = data.index(b"b.png", 40) + len(b"b.png") + 10
    data[offset : offset + 20] = b"\xff" * 20
    archive.write_bytes(bytes(data))
    report = dataset_import(path=archive, dataset_name="zipped")
    assert report.imported == 1
    assert rejection(report, "b.png")[0] == "corrupt or truncated"


def test_it_refuses_a_damaged_zip_with_a_message(tmp_path: Path) -> None:
    archive = zip_of(tmp_path / "faces.zip", {"a.png": draw_face(seed=1)})
    # The end record is intact (so it looks like a zip), the directory it points to not.
    archive.write_bytes(archive.read_bytes().replace(b"PK\x01\x02", b"XX\x01\x02"))
    with pytest.raises(ImportRefused, match=r"faces\.zip"):
        dataset_import(path=archive, dataset_name="zipped")
    assert not Dataset.objects.exists()


def test_it_escapes_manifest_values_in_the_dataset_card(tmp_path: Path) -> None:
    from seke_app.exports.services import ExportOptions, export_create, export_run
    from seke_app.models.exports import Export

    src = tmp_path / "src"
    write(src, "a.png", draw_face(seed=1))
    write(src, "b.png", draw_face(seed=2))
    write(
        src,
        "manifest.csv",
        "file,expression,split\n"
        'a.png,happiness,"</script><script>alert(3)</script>"\n'
        "b.png,fear,x|y **bold** [link](javascript:alert(1))\n",
    )
    dataset_import(path=src, dataset_name="hostile")
    export = export_create(
        dataset=Dataset.objects.get(),
        kind=Export.Kind.FEID,
        options=ExportOptions(grains=("expression",)),
        enqueue=False,
    )
    export_run(export_id=export.id)
    export.refresh_from_db()
    path = export.absolute_path()
    assert path is not None, export.error
    card = zipfile.ZipFile(path).read("README.md").decode()
    assert "<script>" not in card and "</script>" not in card
    assert "&lt;/script&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in card
    split_rows = card.split("## Splits", 1)[1].strip().splitlines()[2:]
    # Every row keeps its two cells: a "|" in a value does not open a third.
    assert all(row.replace("\\|", "").count("|") == 3 for row in split_rows), split_rows
    assert r"x\|y \*\*bold\*\* \[link\](javascript:alert(1))" in card
