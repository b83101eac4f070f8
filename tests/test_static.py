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


def test_the_dashboard_loads_plotly_compressed_and_cached_once_collected(
    db: None, settings: Any, tmp_path: Path
) -> None:
    from django.contrib.auth.models import Group, User
    from django.urls import reverse

    from tests.factories import make_flagged_annotations

    settings.STATIC_ROOT = tmp_path / "collected"
    call_command("collectstatic", interactive=False, verbosity=0)
    run = make_flagged_annotations(1)[0].run
    admin = User.objects.create_user("ada")
    admin.groups.add(Group.objects.get_or_create(name="admins")[0])
    client = Client()
    client.force_login(admin)
    page = client.get(reverse("run_dashboard", args=[run.code])).content.decode()
    url = staticfiles_storage.url("plotly/plotly.min.js")
    assert f'<script src="{url}" defer></script>' in page and url != "/static/plotly/plotly.min.js"
    response = Client().get(url, HTTP_ACCEPT_ENCODING="gzip, deflate, br")
    assert response["Content-Encoding"] in ("gzip", "br")
    assert (
        "max-age=315360000" in response["Cache-Control"]
        and "immutable" in response["Cache-Control"]
    )
    sent = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    # Compressed, plotly.js is well under a third of its size.
    assert len(sent) < PLOTLY.stat().st_size / 3
