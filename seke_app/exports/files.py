"""The files of one export, written with constant memory and checksummed as they go.

Everything is written in a work folder on the local disk of the machine running
the export. Data files (JSON Lines) are written there first; images are streamed
straight into the zip archive. ``finish`` then adds the data files, the dataset
card, ``SHA256SUMS`` (readable by ``sha256sum -c``) and ``manifest.json`` (whose
``files`` list names every other file of the archive with its SHA-256 and size),
and returns the completed file, which the caller saves to the exports storage
under its final name: a half-written export never carries it. Without an archive
the one data file itself is the export.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

_COPY_BUFFER = 1024 * 1024


class HashingFile:
    """A file being written whose SHA-256 and size are known when it is closed."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self._handle: IO[bytes] = path.open("wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._handle.write(data)
        self._hash.update(data)
        self.size += len(data)

    def write_line(self, value: Any) -> None:
        self.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")

    def close(self) -> str:
        if not self._handle.closed:
            self._handle.close()
        return self._hash.hexdigest()


class JsonArrayFile:
    """A JSON array written one element at a time (Label Studio imports arrays)."""

    def __init__(self, file: HashingFile) -> None:
        self.file = file
        self._count = 0
        file.write(b"[\n")

    def append(self, value: Any) -> None:
        prefix = b",\n" if self._count else b""
        self.file.write(prefix + json.dumps(value, ensure_ascii=False).encode())
        self._count += 1

    def close(self) -> None:
        self.file.write(b"\n]\n")


class ExportFiles:
    def __init__(self, work_dir: Path, *, archive: bool) -> None:
        self.work_dir = work_dir
        self.archive = archive
        work_dir.mkdir(parents=True, exist_ok=True)
        self._data: list[HashingFile] = []
        self._checksums = (work_dir / "checksums.tsv").open("w", encoding="utf-8")
        self._zip: zipfile.ZipFile | None = None
        if archive:
            self._zip = zipfile.ZipFile(
                work_dir / "partial.zip",
                "w",
                zipfile.ZIP_DEFLATED,
                allowZip64=True,
                compresslevel=6,
            )

    def data_file(self, name: str) -> HashingFile:
        if not self.archive and self._data:
            raise ValueError("an export without an archive has exactly one file")
        file = HashingFile(self.work_dir / f"data-{len(self._data)}", name)
        self._data.append(file)
        return file

    def add_text(self, name: str, text: str) -> None:
        file = self.data_file(name)
        file.write(text.encode())

    def add_image(self, name: str, source: IO[bytes]) -> None:
        """Stream one image file into the archive, stored as it is (already compressed)."""
        if self._zip is None:
            raise ValueError("images can only be copied into an archive")
        digest = hashlib.sha256()
        size = 0
        with (
            source as reader,
            self._zip.open(
                zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True
            ) as writer,
        ):
            while block := reader.read(_COPY_BUFFER):
                writer.write(block)
                digest.update(block)
                size += len(block)
        self._record(name, digest.hexdigest(), size)

    def _record(self, name: str, sha256: str, size: int) -> None:
        self._checksums.write(f"{sha256}\t{size}\t{name}\n")

    def _entries(self) -> Iterator[dict[str, Any]]:
        with (self.work_dir / "checksums.tsv").open(encoding="utf-8") as handle:
            for line in handle:
                sha256, size, name = line.rstrip("\n").split("\t", 2)
                yield {"path": name, "sha256": sha256, "bytes": int(size)}

    def _add_data_files(self) -> None:
        assert self._zip is not None
        for file in self._data:
            self._record(file.name, file.close(), file.size)
            self._zip.write(file.path, file.name)
            file.path.unlink()

    def _write_sums(self) -> None:
        assert self._zip is not None
        digest = hashlib.sha256()
        size = 0
        with self._zip.open("SHA256SUMS", "w", force_zip64=True) as sums:
            for entry in self._entries():
                line = f"{entry['sha256']}  {entry['path']}\n".encode()
                sums.write(line)
                digest.update(line)
                size += len(line)
        with (self.work_dir / "checksums.tsv").open("a", encoding="utf-8") as handle:
            handle.write(f"{digest.hexdigest()}\t{size}\tSHA256SUMS\n")

    def _write_manifest(self, head: Mapping[str, Any]) -> None:
        # Written piece by piece, so that a file list of any length is never held whole.
        assert self._zip is not None
        opening = json.dumps({**head, "files": []}, indent=2, ensure_ascii=False)
        before, after = opening.rsplit("[]", 1)
        with self._zip.open("manifest.json", "w", force_zip64=True) as out:
            out.write(before.encode() + b"[")
            for index, entry in enumerate(self._entries()):
                separator = b"," if index else b""
                out.write(separator + b"\n    " + json.dumps(entry).encode())
            out.write(b"\n  ]" + after.encode() + b"\n")

    def finish(self, manifest: Mapping[str, Any]) -> Path:
        """Complete the export and return its file (a .zip, or the one data file), still
        in the work folder: ``discard`` removes it unless it was moved away."""
        if not self.archive:
            file = self._data[0]
            file.close()
            return file.path
        assert self._zip is not None
        self._add_data_files()
        self._checksums.close()
        self._write_sums()
        self._write_manifest(manifest)
        self._zip.close()
        return self.work_dir / "partial.zip"

    def discard(self) -> None:
        """Close and remove everything written so far, with the work folder."""
        for file in self._data:
            file.close()
        if not self._checksums.closed:
            self._checksums.close()
        if self._zip is not None and self._zip.fp is not None:
            self._zip.close()
        shutil.rmtree(self.work_dir, ignore_errors=True)
