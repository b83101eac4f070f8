"""Framing the face in a photo the way the offline network's training faces are framed.

The network learnt from tightly cropped faces (FER+ and AffectNet). A portrait
photo, where the face takes a fifth to a half of the frame, shrinks to a face of
10 to 20 pixels in the network's 48-pixel input, and the network then reads
hair, clothes and background. So before the centre square is taken, the largest
frontal face that OpenCV's Haar cascade (Viola & Jones; the cascade file ships
in the ``opencv-python-headless`` wheel) finds is cut out with a margin:

* the crop is a square of ``FRAME_SCALE`` times the box side around the box
  centre, moved inside the image where it would cross an edge. ``FRAME_SCALE``
  is 1 / the median share of the image side that the cascade's box (found with
  the border described in ``find_face``) fills in the training faces, so that a
  cut-out face fills the input as the training faces did; the shares are
  measured by ``python bench/face_framing.py --data ../shared/data`` (figures in
  ``bench/README.md``);
* a face whose box already fills at least ``FRAMED_SHARE`` (half) of the image's
  shorter side is taken as framed: the centre square is used as before, so the
  training and evaluation crops are read exactly as the network learnt them;
* images under ``MIN_DETECT_SIDE`` pixels on their shorter side (FER's 48 x 48)
  are taken as face crops without looking;
* when no face is found the centre square is used, and the sample's evidence says
  so.

Detection runs on a grayscale copy at most ``DETECT_SIDE`` pixels on its shorter
side, because the cascade's cost grows with the pixels it scans, while the
smallest face looked for (``MIN_FACE_SHARE`` of that side) still fills the
cascade's 24-pixel window; the box is scaled back to the original. The time per
image is measured by the same script.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import cv2.data
import numpy as np
from PIL import Image

from seke_app.engine.offline.model import square_gray, to_gray

CASCADE = "haarcascade_frontalface_default.xml"
# Crop side over the cascade's box side: 1 / the training faces' median box share.
FRAME_SCALE = 1.05
# A face box at least this share of the shorter side means the image is a face crop.
FRAMED_SHARE = 0.5
# Images smaller than this are taken as face crops without detection.
MIN_DETECT_SIDE = 96
# Detection runs at most at this size (shorter side, pixels).
DETECT_SIDE = 160
# The smallest face looked for, as a share of the shorter side (and never under
# the cascade's own 24-pixel window).
MIN_FACE_SHARE = 0.15
# The border added around the image before detection, as a share of the shorter side.
PAD_SHARE = 0.25

_lock = threading.Lock()


class FaceDetectorError(RuntimeError):
    """OpenCV's face cascade could not be loaded."""


@dataclass(frozen=True)
class Framing:
    """Where the face was taken from: the detected face's box (x, y, width, height in
    the original image's pixels) when it was cut out, and how, in words."""

    box: tuple[int, int, int, int] | None
    note: str

    @property
    def cropped(self) -> bool:
        return self.box is not None


@cache
def _detector() -> cv2.CascadeClassifier:
    path = Path(cv2.data.haarcascades) / CASCADE
    detector = cv2.CascadeClassifier(str(path))
    if detector.empty():
        raise FaceDetectorError(f"OpenCV could not load its face cascade from {path}")
    return detector


def find_face(gray: Image.Image) -> tuple[int, int, int, int] | None:
    """The largest frontal face in a grayscale image as (x, y, width, height), or None."""
    width, height = gray.size
    scale = min(1.0, DETECT_SIDE / min(width, height))
    small = (
        gray
        if scale == 1.0
        else gray.resize(
            (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX
        )
    )
    # In a tight face crop the face runs off the edges, where the cascade cannot see
    # its outline, and a part of it (an eye, the mouth) may pass for a small face.
    # A border of the image's edge pixels lets the whole face be found, and being
    # the largest it wins.
    pad = round(min(small.size) * PAD_SHARE)
    pixels = np.pad(np.asarray(small, dtype=np.uint8), pad, mode="edge")
    least = max(24, round(min(small.size) * MIN_FACE_SHARE))
    detector = _detector()
    # A cascade object is not documented as safe to share between threads.
    with _lock:
        faces = detector.detectMultiScale(
            pixels,
            scaleFactor=1.1,
            minNeighbors=5,
            minSize=(least, least),
        )
    if len(faces) == 0:
        return None
    x, y, w, h = max((tuple(int(v) for v in face) for face in faces), key=lambda b: b[2] * b[3])
    x, y = max(0, x - pad), max(0, y - pad)
    return (round(x / scale), round(y / scale), round(w / scale), round(h / scale))


def _square_around(gray: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    width, height = gray.size
    x, y, w, h = box
    side = min(round(max(w, h) * FRAME_SCALE), width, height)
    cx, cy = x + w / 2, y + h / 2
    left = int(min(max(cx - side / 2, 0), width - side))
    top = int(min(max(cy - side / 2, 0), height - side))
    return gray.crop((left, top, left + side, top + side))


def face_square(image: Image.Image) -> tuple[Image.Image, Framing]:
    """A grayscale square of the face, framed like the training faces (module docstring)."""
    if min(image.size) < MIN_DETECT_SIDE:
        return square_gray(image), Framing(None, "a small image, read as a face crop")
    gray = to_gray(image)
    box = find_face(gray)
    if box is None:
        return square_gray(gray), Framing(None, "no face found: centre square")
    if max(box[2], box[3]) >= FRAMED_SHARE * min(gray.size):
        return square_gray(gray), Framing(None, "the face fills the image: centre square")
    note = f"the face found at ({box[0]}, {box[1]}), {box[2]} px wide, cut out"
    return _square_around(gray, box), Framing(box, note)
