"""Where SEKE keeps files, and how code reaches them whatever holds them.

Three storages of Django's STORAGES hold SEKE's files:

- "default": the face images (``FaceImage.file``), stored once by content hash;
- "exports": each finished export, under ``<export code>/``;
- "imports": each upload from the import page while it waits for its job,
  under ``<import code>/``.

Without SEKE_STORAGE_URL they are the folders ``media/``, ``exports/`` and
``imports/`` of SEKE_DATA_DIR; with it, prefixes of one S3-compatible bucket
(``seke_app.config.ObjectStorage``), which web machines and workers on other
machines share without a shared file system. Code reaches these files only
through the storages (``default_storage``, a FileField's storage,
``exports_storage()``, ``imports_storage()``) and the helpers below, never by a
path of its own. A job that needs a real file, a zip to read, asks
``local_file``/``local_folder``: where the storage is a local folder that is the
file itself, otherwise a copy on this machine's disk, removed afterwards.

Scratch work (an export's files as they are written, an upload as the request
receives it) stays on the local disk of the machine doing it, under
SEKE_DATA_DIR, and only the finished file is saved to a storage.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol, cast

from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.http import FileResponse, HttpResponseBase, HttpResponseRedirect
from django.utils.http import content_disposition_header

_COPY_BUFFER = 1024 * 1024


class DataDirStorage(FileSystemStorage):
    """A folder of SEKE_DATA_DIR (``exports``, ``imports``) as a storage.

    The folder is looked up at each use rather than once, as MEDIA_ROOT is for the
    default storage: tests give every test a data directory of its own.
    """

    def __init__(self, folder: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.folder = folder

    @property
    def base_location(self) -> str:
        return os.fspath(Path(settings.DATA_DIR) / self.folder)

    @property
    def location(self) -> str:
        return os.path.abspath(self.base_location)


def exports_storage() -> Storage:
    return storages["exports"]


def imports_storage() -> Storage:
    return storages["imports"]


def local_path(storage: Storage, name: str) -> Path | None:
    """Where ``name`` is on this machine's disk, or None for a storage elsewhere (a bucket)."""
    try:
        return Path(storage.path(name))
    except NotImplementedError:
        return None


class _LocalFile(File[bytes]):
    """A file on local disk that a storage on the same disk may move instead of copying.

    Django's FileSystemStorage moves a file that has ``temporary_file_path`` (a rename,
    atomic on one file system); other storages read it.
    """

    def __init__(self, handle: IO[bytes], path: Path) -> None:
        super().__init__(handle, name=path.name)
        self.local = path

    def temporary_file_path(self) -> str:
        return str(self.local)


def save_file(storage: Storage, name: str, path: Path) -> str:
    """Save the local file ``path`` as ``name``, moving it where the storage is on this
    disk; return the name it was saved under (another one if ``name`` is taken)."""
    with path.open("rb") as handle:
        return storage.save(name, _LocalFile(handle, path))


def save_bytes(storage: Storage, name: str, data: bytes) -> str:
    """Save ``data`` as ``name``, whole or not at all; return the name it was saved
    under (another one if ``name`` is taken).

    A bucket stores an object whole or not at all. In a local folder the bytes are
    written to a temporary file beside their place and renamed into it, so that a
    crash never leaves half a file under the name.
    """
    local = local_path(storage, name)
    if local is None:
        return storage.save(name, ContentFile(data))
    local.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=local.parent, prefix=".incoming-")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return save_file(storage, name, Path(temporary))
    finally:
        Path(temporary).unlink(missing_ok=True)


def walk(storage: Storage, folder: str) -> Iterator[str]:
    """The names of every file under ``folder``, relative to it, at any depth."""
    try:
        folders, files = storage.listdir(folder)
    except FileNotFoundError:
        return
    yield from sorted(files)
    for sub in sorted(folders):
        yield from (f"{sub}/{name}" for name in walk(storage, f"{folder}/{sub}"))


def holds(storage: Storage, name: str) -> bool:
    """Whether anything is stored as ``name`` or under it.

    A local folder exists even when empty; a bucket has no folders, only keys that
    start with one's name.
    """
    if storage.exists(name):
        return True
    return next(walk(storage, name), None) is not None


def delete_folder(storage: Storage, folder: str) -> None:
    """Remove ``folder`` and everything under it; nothing to remove is no error."""
    local = local_path(storage, folder)
    if local is not None:
        shutil.rmtree(local, ignore_errors=True)
        return
    for name in list(walk(storage, folder)):
        storage.delete(f"{folder}/{name}")


def download(storage: Storage, name: str, target: Path) -> None:
    """Copy the file ``name`` to ``target`` on this machine's disk.

    django-storages' S3 file reads an object whole into memory or a temporary file
    before the first byte can be read, which for a zip of gigabytes would fill the
    system's temporary folder (often in memory) first; its boto3 object (``obj``)
    writes straight to ``target`` instead, in parts.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with storage.open(name, "rb") as reader:
        s3_object = getattr(reader, "obj", None)
        if s3_object is not None:
            s3_object.download_file(str(target))
            return
        with target.open("wb") as writer:
            shutil.copyfileobj(reader, writer, _COPY_BUFFER)


@contextlib.contextmanager
def local_file(storage: Storage, name: str, *, scratch: Path) -> Iterator[Path]:
    """The file ``name`` on this machine's disk: the file itself where the storage is
    a local folder, else a copy in a new folder under ``scratch``, removed on exit.
    FileNotFoundError when there is no such file."""
    local = local_path(storage, name)
    if local is not None:
        yield local
        return
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".copy-") as folder:
        target = Path(folder) / PurePosixPath(name).name
        download(storage, name, target)
        yield target


@contextlib.contextmanager
def local_folder(storage: Storage, name: str, *, scratch: Path) -> Iterator[Path]:
    """The folder ``name`` on this machine's disk, as ``local_file`` gives a file."""
    local = local_path(storage, name)
    if local is not None:
        yield local
        return
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".copy-") as folder:
        target = Path(folder) / PurePosixPath(name).name
        target.mkdir()
        for relative in walk(storage, name):
            download(storage, f"{name}/{relative}", target / relative)
        yield target


class _PresigningStorage(Protocol):
    """django-storages' S3Storage.url: a presigned link, with response headers to set."""

    def url(self, name: str, parameters: dict[str, str] | None = None) -> str: ...


def download_response(storage: Storage, name: str, *, filename: str) -> HttpResponseBase:
    """The file ``name`` as a download called ``filename``.

    From a local folder it is streamed (the server may hand it to sendfile). From a
    bucket the browser is redirected to a presigned link that works for a few
    minutes (``DOWNLOAD_LINK_SECONDS``) and names the file: an export may be
    gigabytes, and django-storages reads a file whole before it can be sent on, so
    relaying it would hold a web worker and its memory or disk for the whole
    download. The link is made only after the view's access check.
    """
    if local_path(storage, name) is not None:
        return FileResponse(storage.open(name, "rb"), as_attachment=True, filename=filename)
    disposition = content_disposition_header(as_attachment=True, filename=filename)
    parameters = {"ResponseContentDisposition": disposition or "attachment"}
    return HttpResponseRedirect(cast(_PresigningStorage, storage).url(name, parameters))


def media_location() -> str:
    """Where the face images are, in words, for an export that references them by path."""
    if settings.OBJECT_STORAGE is not None:
        return f"{settings.OBJECT_STORAGE}/ (SEKE_STORAGE_URL)"
    return "SEKE's media folder (SEKE_DATA_DIR/media)"
