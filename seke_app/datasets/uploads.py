"""The import page's uploads, written straight into the data directory.

Django's default upload handlers keep each file under FILE_UPLOAD_MAX_MEMORY_SIZE
in the web process's memory and write larger ones to the system's temporary
folder. An upload of two thousand photos would then sit in memory, and a zip
would be written twice: once there, once where the import job reads it.
``ImportUploadHandler`` writes each file once, into a new folder under
``SEKE_DATA_DIR/imports/incoming`` on the web machine's disk, from where the import
service saves it to the imports storage: a rename on the same file system where
that storage is the folder ``SEKE_DATA_DIR/imports``, an upload to the bucket
where it is one (``seke_app.media``).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest

from seke_app.models.datasets import imports_dir


class StoredUpload(UploadedFile[bytes]):
    """An uploaded file already written to disk, closed once complete.

    It is kept closed because an upload may hold thousands of files, more than a
    process may keep open; the import service moves it by its path.
    """

    def __init__(self, path: Path, name: str, content_type: str | None) -> None:
        self.handle = path.open("wb")
        super().__init__(self.handle, name=name, content_type=content_type, size=0)
        self.path = path

    def finish(self, size: int) -> None:
        self.handle.close()
        self.size = size

    def temporary_file_path(self) -> str:
        return str(self.path)


class ImportUploadHandler(FileUploadHandler):
    """Streams every file of the request into ``folder``, one file each."""

    def __init__(self, request: HttpRequest, folder: Path) -> None:
        super().__init__(request)
        self.folder = folder
        self.upload: StoredUpload | None = None
        self.count = 0

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count += 1
        path = self.folder / f"{self.count:05d}.part"
        self.upload = StoredUpload(path, str(self.file_name), self.content_type)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        assert self.upload is not None
        self.upload.handle.write(raw_data)

    def file_complete(self, file_size: int) -> StoredUpload:
        assert self.upload is not None
        self.upload.finish(file_size)
        return self.upload

    def upload_interrupted(self) -> None:
        if self.upload is not None:
            self.upload.handle.close()
            self.upload.path.unlink(missing_ok=True)


def incoming_folder() -> Path:
    """A new folder, not yet created, for one request's uploads."""
    return imports_dir() / "incoming" / uuid.uuid4().hex


def discard_folder(folder: Path) -> None:
    """Remove what is left of a request's uploads (nothing, once an import kept them)."""
    shutil.rmtree(folder, ignore_errors=True)


def content_length(request: HttpRequest) -> int:
    """The request body's declared length; 0 when missing or malformed."""
    try:
        return max(int(request.META.get("CONTENT_LENGTH") or 0), 0)
    except ValueError:
        return 0
