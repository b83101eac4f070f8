"""Static files: plotly.js from the installed package, compressed and cacheable once collected."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import plotly
from django.contrib.staticfiles import finders
from django.contrib.staticfiles.storage import staticfiles_storage
from django.core.management import call_command
from django.test import Client

PLOTLY = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def test_it_finds_plotly_js_in_the_installed_package() -> None:
    assert finders.find("plotly/plotly.min.js") == str(PLOTLY)
    assert finders.find("plotly/widgetbundle.js") is None


def test_it_uses_plain_names_before_anything_is_collected() -> None:
    assert staticfiles_storage.url("plotly/plotly.min.js") == "/static/plotly/plotly.min.js"


def test_it_serves_collected_files_compressed_under_hashed_names(
    db: None, settings: Any, tmp_path: Path
) -> None:
    settings.STATIC_ROOT = tmp_path / "collected"
    call_command("collectstatic", interactive=False, verbosity=0)
    url = staticfiles_storage.url("plotly/plotly.min.js")
    assert url.startswith("/static/plotly/plotly.min.") and url != "/static/plotly/plotly.min.js"
    hashed = settings.STATIC_ROOT / url.removeprefix("/static/")
    assert gzip.decompress(Path(f"{hashed}.gz").read_bytes()) == PLOTLY.read_bytes()
    response = Client().get(url, HTTP_ACCEPT_ENCODING="gzip")
    assert response.status_code == 200
    assert response["Content-Encoding"] == "gzip"
    assert "immutable" in response["Cache-Control"]
