"""Every page against every role: anonymous, outsider, annotator, admin."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from seke_app.datasets.services import dataset_import
from seke_app.models import FaceImage
from tests.conftest import client_for, draw_face

pytestmark = pytest.mark.django_db


@pytest.fixture
def image(tmp_path: Path) -> FaceImage:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(draw_face(seed=1))
    (src / "manifest.csv").write_text("file,expression\na.png,happiness\n")
    dataset_import(path=src, dataset_name="demo")
    return FaceImage.objects.get()


def pages(image: FaceImage) -> dict[str, tuple[str, str]]:
    """url name -> (url, lowest role allowed: login / annotator / admin)."""
    return {
        "home": (reverse("home"), "login"),
        "queue": (reverse("review:queue"), "annotator"),
        "image": (reverse("image_detail", args=[image.code]), "annotator"),
        "image_file": (reverse("image_file", args=[image.code]), "annotator"),
        "datasets": (reverse("dataset_list"), "admin"),
        "dataset": (reverse("dataset_detail", args=[image.dataset.code]), "admin"),
        "upload": (reverse("dataset_upload"), "admin"),
    }


ALLOWED = {
    "anonymous": set(),
    "outsider": {"login"},
    "annotator": {"login", "annotator"},
    "admin": {"login", "annotator", "admin"},
}


@pytest.mark.parametrize("role", list(ALLOWED))
def test_it_lets_each_role_see_only_its_pages(
    role: str, image: FaceImage, outsider: User, annotator: User, admin_user: User
) -> None:
    user = {"anonymous": None, "outsider": outsider, "annotator": annotator, "admin": admin_user}[
        role
    ]
    client = client_for(user)
    for name, (url, needs) in pages(image).items():
        response = client.get(url)
        if needs in ALLOWED[role]:
            assert response.status_code == 200, (role, name)
        elif user is None:
            assert response.status_code == 302 and "/login/" in response["Location"], name
        else:
            assert response.status_code == 403, (role, name)


def test_it_shows_the_navigation_of_the_role(annotator: User, admin_user: User) -> None:
    annotator_page = client_for(annotator).get(reverse("home")).content.decode()
    admin_page = client_for(admin_user).get(reverse("home")).content.decode()
    assert "Review queue" in annotator_page and "Import" not in annotator_page
    assert "Review queue" in admin_page and reverse("dataset_upload") in admin_page


def test_it_returns_404_for_an_unknown_code(admin_user: User) -> None:
    url = reverse("image_detail", args=["00000000-0000-0000-0000-000000000000"])
    assert client_for(admin_user).get(url).status_code == 404


def test_it_logs_in_and_out(annotator: User) -> None:
    from django.test import Client

    from tests.conftest import PASSWORD

    client = Client()
    response = client.post(reverse("login"), {"username": "ann", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get(reverse("review:queue")).status_code == 200
    client.post(reverse("logout"))
    assert client.get(reverse("review:queue")).status_code == 302


def test_it_imports_an_upload_from_the_page(admin_user: User, tmp_path: Path) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    files = [
        SimpleUploadedFile("one.png", draw_face(seed=1), "image/png"),
        SimpleUploadedFile("two.png", b"broken", "image/png"),
        SimpleUploadedFile("manifest.csv", b"file,expression\none.png,fear\n", "text/csv"),
    ]
    from seke_app.datasets.services import dataset_import_run
    from seke_app.models.datasets import DatasetImport

    client = client_for(admin_user)
    response = client.post(reverse("dataset_upload"), {"dataset": "uploaded", "files": files})
    # The upload is imported by a background job (tests/test_import_jobs.py runs the worker).
    job = DatasetImport.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/imports/{job.code}/"
    dataset_import_run(import_id=job.id)
    body = client.get(response["Location"]).content.decode()
    assert '"n-imported">1 (1 with labels)' in body
    assert "two.png" in body and "not an image" in body
    assert FaceImage.objects.get(dataset__name="uploaded").known_expression == "fear"


def test_it_refuses_an_upload_with_a_bad_dataset_name(admin_user: User) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = client_for(admin_user).post(
        reverse("dataset_upload"),
        {"dataset": "bad name!", "files": [SimpleUploadedFile("a.png", draw_face(), "image/png")]},
    )
    assert "Use letters, digits" in response.content.decode()
    assert not FaceImage.objects.exists()


def test_it_creates_users_in_a_role() -> None:
    from django.core.management import call_command

    from seke_app.roles import is_admin, is_annotator

    call_command("add_user", "zoe", "--role", "annotator", "--password", "pw-123456789")
    call_command("add_user", "max", "--role", "admin", "--password", "pw-123456789")
    zoe, boss = User.objects.get(username="zoe"), User.objects.get(username="max")
    assert is_annotator(zoe) and not is_admin(zoe)
    assert is_admin(boss) and boss.is_staff
