"""Static files: plotly.js from the installed plotly package, and how files are named.

The charts need plotly.js, which the ``plotly`` Python package ships. This
finder offers that one file to Django's staticfiles as ``plotly/plotly.min.js``,
so that it is served like the project's own static files (WhiteNoise, compressed
and with a hashed, cacheable name once collected) without copying it into the
repository or loading a CDN.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import plotly
from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage
from whitenoise.storage import CompressedManifestStaticFilesStorage

NAME = "plotly/plotly.min.js"
_SOURCE_DIR = Path(plotly.__file__).parent / "package_data"
_FILE = "plotly.min.js"


class PlotlyFinder(BaseFinder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.storage = FileSystemStorage(location=_SOURCE_DIR)
        # Read by collectstatic and WhiteNoise: the file's name below STATIC_URL.
        self.storage.prefix = "plotly"  # type: ignore[attr-defined]

    def check(self, **kwargs: Any) -> list[Any]:
        return []

    def find(  # type: ignore[override]
        self, path: str, find_all: bool = False, **kwargs: Any
    ) -> str | list[str]:
        if path != NAME:
            return []
        found = str(_SOURCE_DIR / _FILE)
        return [found] if find_all else found

    def list(self, ignore_patterns: Any) -> Iterator[tuple[str, FileSystemStorage]]:
        yield _FILE, self.storage


# WhiteNoise ships no type information.
class CollectedStaticStorage(CompressedManifestStaticFilesStorage):  # type: ignore[misc]
    """Hashed, compressed names for collected files; plain names for the rest.

    ``collectstatic`` writes every static file compressed and under a name that
    carries its hash, which WhiteNoise serves with a far-future cache lifetime.
    Before anything is collected (tests, a first ``runserver``), or for a file
    added since, the plain name is used and WhiteNoise serves it from its source
    folder through the finders.
    """

    def stored_name(self, name: str) -> str:
        try:
            return str(super().stored_name(name))
        except ValueError:
            return name
