"""Numpy inference for the offline annotator's small expression CNN.

The network is trained with torch by ``train.py`` and exported to ``weights.npz``
with batch norm already folded into the convolutions, so running it needs only
numpy and Pillow. Convolutions are computed as im2col (a sliding-window view
copied into a patch matrix) followed by one matrix product per layer, which is
what makes batched inference fast on a single core.

The weights file holds float16 arrays named ``layer<i>.weight``/``layer<i>.bias``
and ``head.expression.*``/``head.va.*``, plus a JSON ``metadata`` string that
lists the layer kinds in order and records how the weights were trained.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from seke_app.engine.vocab import EXPRESSIONS

FloatArray = npt.NDArray[np.float32]

WEIGHTS_FORMAT = "seke-offline-cnn/1"
LAYER_KINDS = ("conv3x3_relu", "maxpool2", "flatten", "dense_relu")
# Images are cut into chunks so that the im2col matrices of the first layers
# stay small enough to be cache friendly while the matrix products stay large.
_CHUNK = 64


class OfflineWeightsError(RuntimeError):
    """The weights file is missing, unreadable or does not describe a valid network."""


@dataclass(frozen=True)
class OfflinePrediction:
    """Network outputs for a batch: class probabilities and valence/arousal."""

    probs: FloatArray  # (N, 8) softmax probabilities in EXPRESSIONS order.
    va: FloatArray  # (N, 2) valence and arousal in [-1, 1].

    def labels(self) -> list[str]:
        """The most probable expression of every row."""
        return [EXPRESSIONS[i] for i in self.probs.argmax(axis=1)]

    def sample(self, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        """Draw one class index per row from its softmax distribution."""
        cumulative = np.cumsum(self.probs, axis=1)
        draws = rng.random((len(self.probs), 1)) * cumulative[:, -1:]
        indices: npt.NDArray[np.int64] = (cumulative < draws).sum(axis=1, dtype=np.int64)
        # Rounding can leave the last cumulative value a hair below the draw.
        return np.minimum(indices, len(EXPRESSIONS) - 1)


def square_gray(image: Image.Image) -> Image.Image:
    """Convert any Pillow image to 8-bit grayscale and cut its centre square."""
    gray = to_gray(image)
    width, height = gray.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return gray.crop((left, top, left + side, top + side))


def to_gray(image: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit grayscale."""
    # Pillow's own conversion clips 16-bit and float images to 0-255 instead of
    # rescaling them, which turns most of them white, so those are rescaled here.
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else values * 0.0
        return Image.fromarray(scaled.round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels carry arbitrary colours; painting them grey keeps
        # them from turning into spurious edges.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    return image.convert("L")


def preprocess_image(image: Image.Image, size: int) -> FloatArray:
    """Grayscale, centre square crop, resize to ``size`` and scale to [0, 1]."""
    square = square_gray(image)
    if square.size != (size, size):
        square = square.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(square, dtype=np.float32) / np.float32(255.0)


def _conv3x3_relu(x: FloatArray, weight: FloatArray, bias: FloatArray) -> FloatArray:
    """A 'same' 3x3 convolution plus ReLU on an NHWC batch, as im2col + matmul."""
    n, h, w, c = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = sliding_window_view(padded, (3, 3), axis=(1, 2))  # (N, H, W, C, 3, 3)
    # Putting the channel axis last gives long contiguous runs in the copy below,
    # which makes it markedly faster than copying the view in its native order.
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * h * w, 9 * c)
    out = patches @ weight
    out += bias
    np.maximum(out, 0.0, out=out)
    return out.reshape(n, h, w, -1)


def _maxpool2(x: FloatArray) -> FloatArray:
    n, h, w, c = x.shape
    pooled: FloatArray = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    return pooled


def _flatten(x: FloatArray) -> FloatArray:
    # torch flattens in (C, H, W) order, so the NHWC batch is transposed first.
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), -1)


def _softmax(logits: FloatArray, temperature: float) -> FloatArray:
    scaled = logits / np.float32(temperature)
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    probs: FloatArray = exp / exp.sum(axis=1, keepdims=True)
    return probs


@dataclass(frozen=True)
class _Layer:
    kind: str
    weight: FloatArray | None = None
    bias: FloatArray | None = None

    def __call__(self, x: FloatArray) -> FloatArray:
        if self.kind == "maxpool2":
            return _maxpool2(x)
        if self.kind == "flatten":
            return _flatten(x)
        assert self.weight is not None and self.bias is not None
        if self.kind == "conv3x3_relu":
            return _conv3x3_relu(x, self.weight, self.bias)
        out: FloatArray = x @ self.weight + self.bias
        np.maximum(out, 0.0, out=out)
        return out


class OfflineModel:
    """The offline expression CNN: deterministic and test-time-augmented predictions."""

    WEIGHTS_PATH: ClassVar[Path] = Path(__file__).with_name("weights.npz")

    def __init__(
        self,
        layers: Sequence[_Layer],
        heads: dict[str, tuple[FloatArray, FloatArray]],
        metadata: dict[str, Any],
    ) -> None:
        self._layers = tuple(layers)
        self._heads = heads
        self.metadata = metadata
        self.input_size = int(metadata["input_size"])
        self._mean = np.float32(metadata["input_mean"])
        self._std = np.float32(metadata["input_std"])

    @classmethod
    def load(cls, path: Path | None = None) -> OfflineModel:
        """Read a weights file; raise ``OfflineWeightsError`` saying what is wrong."""
        path = cls.WEIGHTS_PATH if path is None else Path(path)
        if not path.is_file():
            raise OfflineWeightsError(
                f"Offline annotator weights not found at {path}. Train them with "
                "`python -m seke_app.engine.offline.train` (needs the 'train' extra)."
            )
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
            return cls._from_arrays(arrays)
        except OfflineWeightsError:
            raise
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            EOFError,
            zipfile.BadZipFile,
        ) as exc:
            raise OfflineWeightsError(
                f"Offline annotator weights at {path} are corrupt or incomplete ({exc})."
            ) from exc

    @classmethod
    def _from_arrays(cls, arrays: dict[str, npt.NDArray[Any]]) -> OfflineModel:
        metadata = json.loads(str(arrays["metadata"]))
        if metadata.get("format") != WEIGHTS_FORMAT:
            raise OfflineWeightsError(
                f"Unknown weights format {metadata.get('format')!r}; expected {WEIGHTS_FORMAT!r}."
            )
        layers = [_read_layer(arrays, i, kind) for i, kind in enumerate(metadata["layers"])]
        heads = {name: _read_dense(arrays, f"head.{name}") for name in ("expression", "va")}
        if heads["expression"][0].shape[1] != len(EXPRESSIONS) or heads["va"][0].shape[1] != 2:
            raise OfflineWeightsError("The weights' output heads do not match 8 classes + VA.")
        model = cls(layers, heads, metadata)
        model._check_shapes()
        return model

    def _check_shapes(self) -> None:
        # One dummy image through the network catches mismatched layer sizes at
        # load time instead of at the first real prediction.
        try:
            self.predict_arrays(np.zeros((1, self.input_size, self.input_size), np.float32))
        except ValueError as exc:
            raise OfflineWeightsError(f"The weights' layer shapes do not fit ({exc}).") from exc

    @property
    def parameter_count(self) -> int:
        arrays = [a for layer in self._layers for a in (layer.weight, layer.bias) if a is not None]
        arrays += [a for pair in self._heads.values() for a in pair]
        return sum(int(a.size) for a in arrays)

    def preprocess(self, image: Image.Image) -> FloatArray:
        """The network's (H, W) float32 input for any Pillow image."""
        return preprocess_image(image, self.input_size)

    def predict(
        self, images: Sequence[Image.Image], *, temperature: float = 1.0
    ) -> OfflinePrediction:
        """Deterministic batched prediction for Pillow images of any mode and size."""
        if not images:
            return self.predict_arrays(
                np.zeros((0, self.input_size, self.input_size), np.float32),
                temperature=temperature,
            )
        batch = np.stack([self.preprocess(image) for image in images])
        return self.predict_arrays(batch, temperature=temperature)

    def predict_augmented(
        self,
        image: Image.Image,
        k: int,
        rng: np.random.Generator,
        *,
        temperature: float = 1.0,
    ) -> OfflinePrediction:
        """``k`` predictions of randomly shifted, scaled, flipped and lit views of one image."""
        if k < 1:
            raise ValueError("k must be at least 1.")
        square = square_gray(image)
        views = np.stack([augmented_view(square, self.input_size, rng) for _ in range(k)])
        return self.predict_arrays(views, temperature=temperature)

    def predict_arrays(self, batch: FloatArray, *, temperature: float = 1.0) -> OfflinePrediction:
        """Prediction for an already preprocessed (N, H, W) batch with values in [0, 1]."""
        if temperature <= 0:
            raise ValueError("temperature must be positive.")
        size = self.input_size
        if batch.ndim != 3 or batch.shape[1:] != (size, size):
            raise ValueError(f"Expected a (N, {size}, {size}) batch, got {batch.shape}.")
        if len(batch) == 0:
            return OfflinePrediction(np.zeros((0, 8), np.float32), np.zeros((0, 2), np.float32))
        chunks = range(0, len(batch), _CHUNK)
        hidden = np.concatenate([self._features(batch[i : i + _CHUNK]) for i in chunks])
        logits = hidden @ self._heads["expression"][0] + self._heads["expression"][1]
        va = np.tanh(hidden @ self._heads["va"][0] + self._heads["va"][1])
        return OfflinePrediction(_softmax(logits, temperature), va.astype(np.float32))

    def _features(self, chunk: FloatArray) -> FloatArray:
        x = ((chunk.astype(np.float32) - self._mean) / self._std)[..., np.newaxis]
        for layer in self._layers:
            x = layer(x)
        return x


def augmented_view(square: Image.Image, size: int, rng: np.random.Generator) -> FloatArray:
    """One random test-time view of a grayscale square face, as a (size, size) array.

    The ranges stay inside those used for training augmentation so that every
    view is an image the network has learnt to read.
    """
    side = square.width
    crop = side * rng.uniform(0.86, 1.0)
    left, top = rng.uniform(0.0, side - crop, size=2)
    view = square.resize(
        (size, size), Image.Resampling.BILINEAR, box=(left, top, left + crop, top + crop)
    )
    pixels = np.asarray(view, dtype=np.float32) / np.float32(255.0)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-0.08, 0.08)
    mean = pixels.mean()
    jittered = (pixels - mean) * np.float32(contrast) + mean + np.float32(brightness)
    clipped: FloatArray = np.clip(jittered, 0.0, 1.0).astype(np.float32)
    return clipped


def _read_layer(arrays: dict[str, npt.NDArray[Any]], index: int, kind: str) -> _Layer:
    if kind not in LAYER_KINDS:
        raise OfflineWeightsError(f"Unknown layer kind {kind!r} in the weights file.")
    if kind in ("maxpool2", "flatten"):
        return _Layer(kind)
    weight, bias = _read_dense(arrays, f"layer{index}")
    if kind == "conv3x3_relu":
        # Stored in torch's (out, in, 3, 3) layout; im2col wants (3 * 3 * in, out)
        # with the input channel varying fastest, matching the patch matrix.
        torch_weight = arrays[f"layer{index}.weight"].astype(np.float32)
        weight = np.ascontiguousarray(torch_weight.transpose(2, 3, 1, 0).reshape(-1, len(bias)))
    return _Layer(kind, weight, bias)


def _read_dense(arrays: dict[str, npt.NDArray[Any]], name: str) -> tuple[FloatArray, FloatArray]:
    # Dense weights are stored as torch's (out, in); matmul wants (in, out).
    weight = arrays[f"{name}.weight"].astype(np.float32)
    bias = arrays[f"{name}.bias"].astype(np.float32)
    if weight.ndim == 2:
        weight = np.ascontiguousarray(weight.T)
    return weight, bias
