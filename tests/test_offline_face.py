"""Framing the face before the offline network reads it, on faces the tests draw."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from seke_app.engine.offline import face as face_module
from seke_app.engine.offline.backend import OfflineBackend
from seke_app.engine.offline.face import FRAME_SCALE, face_square, find_face
from seke_app.engine.types import AnnotationRequest, Answer, VerificationRequest
from seke_app.engine.vocab import Vocabulary
from tests.test_offline_backend import TinyModel


def drawn_face(side: int) -> Image.Image:
    """A grey face the Haar cascade takes for one: brows, eyes, a bright nose, a mouth."""
    image = Image.new("L", (side, round(side * 1.2)), 70)
    draw = ImageDraw.Draw(image)
    w, h = image.size
    draw.ellipse((w * 0.12, h * 0.05, w * 0.88, h * 0.98), fill=185)
    for x in (0.33, 0.67):
        draw.ellipse((w * (x - 0.13), h * 0.30, w * (x + 0.13), h * 0.34), fill=60)
        draw.ellipse((w * (x - 0.10), h * 0.38, w * (x + 0.10), h * 0.46), fill=40)
    draw.rectangle((w * 0.45, h * 0.45, w * 0.55, h * 0.62), fill=215)
    draw.ellipse((w * 0.40, h * 0.62, w * 0.60, h * 0.67), fill=110)
    draw.ellipse((w * 0.32, h * 0.74, w * 0.68, h * 0.82), fill=70)
    return image.filter(ImageFilter.GaussianBlur(side / 40))


def portrait(face_side: int = 80, at: tuple[int, int] = (130, 90)) -> Image.Image:
    """A 400-pixel colour photo with a small face in it, off centre."""
    canvas = Image.new("L", (400, 400), 150)
    canvas.paste(drawn_face(face_side), at)
    return canvas.convert("RGB")


def sizes_into(log: list[tuple[int, int]], func: Callable[..., Any]) -> Callable[..., Any]:
    """``func``, noting the size of the image it is called with first."""

    def recorded(image: Image.Image, *args: Any, **kwargs: Any) -> Any:
        log.append(image.size)
        return func(image, *args, **kwargs)

    return recorded


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_it_finds_a_small_face_and_cuts_it_out_with_the_training_margin() -> None:
    photo = portrait(face_side=80, at=(200, 60))
    box = find_face(photo.convert("L"))
    assert box is not None
    x, y, w, h = box
    # The face was pasted at (200, 60), 80 x 96 pixels.
    assert 190 <= x + w / 2 - 40 <= 210 and 50 <= y <= 110
    square, framing = face_square(photo)
    assert framing.cropped and framing.box == box
    assert "cut out" in framing.note
    assert square.mode == "L"
    assert square.width == square.height == round(max(w, h) * FRAME_SCALE)
    # The cut is the face, not the centre of the photo: its pixels match the photo's there.
    left = round(x + w / 2 - square.width / 2)
    top = round(y + h / 2 - square.height / 2)
    expected = photo.convert("L").crop((left, top, left + square.width, top + square.height))
    difference = np.abs(np.asarray(square, float) - np.asarray(expected, float)).mean()
    assert difference < 2.0


def test_a_face_at_the_edge_is_cut_inside_the_image() -> None:
    photo = portrait(face_side=80, at=(310, 300))
    square, framing = face_square(photo)
    assert framing.cropped
    assert square.width <= 400
    assert framing.box is not None and framing.box[0] + framing.box[2] <= 400


def test_a_small_image_is_taken_as_a_face_crop_without_looking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(*args: Any) -> None:
        raise AssertionError("the detector ran on a small image")

    monkeypatch.setattr(face_module, "find_face", never)
    square, framing = face_square(drawn_face(48))
    assert framing.note == "a small image, read as a face crop"
    assert square.size == (48, 48)


@pytest.mark.parametrize(
    ("image", "note", "side"),
    [
        (drawn_face(200).convert("RGB"), "the face fills the image: centre square", 200),
        (Image.new("RGB", (300, 200), (120, 130, 140)), "no face found: centre square", 200),
    ],
    ids=["face crop", "no face"],
)
def test_without_a_small_face_it_reads_the_centre_square_and_says_why(
    image: Image.Image, note: str, side: int
) -> None:
    square, framing = face_square(image)
    assert not framing.cropped
    assert framing.note == note
    assert square.size == (side, side)


def test_the_backend_reads_the_framed_face_and_says_how_in_the_evidence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int]] = []
    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(
        "seke_app.engine.offline.backend.face_square", sizes_into(calls, face_module.face_square)
    )
    model = TinyModel()
    model.predict_augmented = sizes_into(seen, model.predict_augmented)  # type: ignore[method-assign]
    backend = OfflineBackend(model)
    image = png(portrait())
    request = AnnotationRequest(image_bytes=image, vocabulary=Vocabulary())
    samples = backend.sample(request, 3, 1.0) + backend.sample(request, 2, 1.0)
    aggregate = Answer("neutral", 0.0, 0.0, {au: False for au in Vocabulary().aus})
    reply = backend.verify(VerificationRequest(request, aggregate, ""))
    # The face is found once for the image, however many rounds and the verification.
    assert calls == [(400, 400)]
    assert seen and all(size[0] < 400 and size[0] == size[1] for size in seen)
    for sample in [*samples, reply]:
        assert sample.answer is not None
        assert "cut out" in sample.answer.evidence["expression"]
        assert "cut out" in json.loads(sample.raw)["framing"]
