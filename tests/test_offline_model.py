"""The offline annotator's numpy CNN, on faces drawn here (never on the datasets)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from seke_app.engine.offline import OfflineModel, OfflinePrediction, OfflineWeightsError
from seke_app.engine.vocab import EXPRESSIONS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model() -> OfflineModel:
    return OfflineModel.load()


def _face(seed: int, size: tuple[int, int] = (96, 96), mode: str = "RGB") -> Image.Image:
    """A cartoon face whose eyes and mouth move with the seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 80, 3)))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.15, height * 0.1, width * 0.85, height * 0.95), fill=(200, 170, 150))
    for eye_x in (0.35, 0.65):
        r = width * rng.uniform(0.03, 0.08)
        cx, cy = width * eye_x, height * rng.uniform(0.35, 0.45)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(30, 30, 30))
    top = height * rng.uniform(0.62, 0.72)
    draw.arc(
        (width * 0.3, top, width * 0.7, top + height * 0.15),
        0,
        180,
        fill=(90, 20, 20),
        width=max(1, width // 30),
    )
    return image.convert(mode)


def _check(prediction: OfflinePrediction, n: int) -> None:
    assert prediction.probs.shape == (n, len(EXPRESSIONS))
    assert prediction.va.shape == (n, 2)
    assert np.allclose(prediction.probs.sum(axis=1), 1.0, atol=1e-5)
    assert (prediction.probs >= 0).all()
    assert (np.abs(prediction.va) <= 1.0).all()


def _entropy(probs: np.ndarray) -> np.ndarray:
    entropy: np.ndarray = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)
    return entropy


def test_it_loads_the_shipped_weights_with_metadata(model: OfflineModel) -> None:
    assert OfflineModel.WEIGHTS_PATH.stat().st_size < 2 * 1024 * 1024
    for key in ("training_data", "epochs", "held_out", "date", "parameter_count"):
        assert key in model.metadata
    assert model.metadata["parameter_count"] == model.parameter_count


def test_it_gives_probabilities_and_bounded_va(model: OfflineModel) -> None:
    _check(model.predict([_face(seed) for seed in range(5)]), 5)


def _in_mode(image: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        # Pillow cannot convert to 16-bit directly; a 16-bit array becomes "I;16".
        return Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257)
    return image.convert(mode)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "1", "I", "I;16", "F", "CMYK"])
def test_it_accepts_every_image_mode(model: OfflineModel, mode: str) -> None:
    image = _in_mode(_face(1), mode)
    assert image.mode == mode
    preprocessed = model.preprocess(image)
    assert preprocessed.shape == (model.input_size, model.input_size)
    assert preprocessed.dtype == np.float32
    assert preprocessed.min() >= 0.0 and preprocessed.max() <= 1.0
    _check(model.predict([image]), 1)


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (48, 48), (300, 120), (40, 640), (1024, 1024)])
def test_it_accepts_every_image_size(model: OfflineModel, size: tuple[int, int]) -> None:
    _check(model.predict([_face(2, size=size)]), 1)


def test_it_gives_the_same_result_batched_as_one_by_one(model: OfflineModel) -> None:
    # More images than one internal chunk, so chunking is exercised too.
    images = [_face(seed, size=(64 + seed, 80)) for seed in range(70)]
    batched = model.predict(images)
    single = [model.predict([image]) for image in images]
    assert np.allclose(batched.probs, np.concatenate([s.probs for s in single]), atol=1e-5)
    assert np.allclose(batched.va, np.concatenate([s.va for s in single]), atol=1e-5)


def test_it_is_deterministic_without_augmentation(model: OfflineModel) -> None:
    images = [_face(seed) for seed in range(3)]
    assert np.array_equal(model.predict(images).probs, model.predict(images).probs)


def test_it_flattens_the_distribution_with_temperature(model: OfflineModel) -> None:
    images = [_face(seed) for seed in range(8)]
    cold = model.predict(images, temperature=0.5).probs
    plain = model.predict(images).probs
    hot = model.predict(images, temperature=3.0).probs
    assert (_entropy(cold) <= _entropy(plain) + 1e-6).all()
    assert (_entropy(plain) <= _entropy(hot) + 1e-6).all()
    assert (plain.argmax(axis=1) == hot.argmax(axis=1)).all()


def test_it_rejects_a_non_positive_temperature(model: OfflineModel) -> None:
    with pytest.raises(ValueError, match="temperature"):
        model.predict([_face(0)], temperature=0.0)


def test_it_reproduces_augmented_views_with_the_same_seed(model: OfflineModel) -> None:
    image = _face(3, size=(120, 150))
    first = model.predict_augmented(image, 6, np.random.default_rng(7))
    second = model.predict_augmented(image, 6, np.random.default_rng(7))
    _check(first, 6)
    assert np.array_equal(first.probs, second.probs)
    assert np.array_equal(first.va, second.va)


def test_it_varies_augmented_views_with_different_seeds(model: OfflineModel) -> None:
    image = _face(3, size=(120, 150))
    first = model.predict_augmented(image, 6, np.random.default_rng(7))
    other = model.predict_augmented(image, 6, np.random.default_rng(8))
    assert not np.allclose(first.probs, other.probs)
    # The views of one call differ from each other as well.
    assert np.ptp(first.probs, axis=0).max() > 1e-4


def test_it_samples_classes_from_the_softmax() -> None:
    probs = np.array([[0.0, 1.0] + [0.0] * 6, [0.25, 0.0, 0.0, 0.75] + [0.0] * 4], np.float32)
    prediction = OfflinePrediction(probs, np.zeros((2, 2), np.float32))
    rng = np.random.default_rng(0)
    draws = np.stack([prediction.sample(rng) for _ in range(4000)])
    assert (draws[:, 0] == 1).all()
    assert set(np.unique(draws[:, 1])) == {0, 3}
    assert abs((draws[:, 1] == 3).mean() - 0.75) < 0.03
    assert prediction.labels() == ["happiness", "surprise"]


def test_it_reports_a_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(OfflineWeightsError, match="not found"):
        OfflineModel.load(tmp_path / "absent.npz")


def test_it_reports_a_corrupt_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    path.write_bytes(b"this is not a numpy archive" * 10)
    with pytest.raises(OfflineWeightsError, match="corrupt"):
        OfflineModel.load(path)


def test_it_reports_a_truncated_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    path.write_bytes(OfflineModel.WEIGHTS_PATH.read_bytes()[:5000])
    with pytest.raises(OfflineWeightsError, match="corrupt"):
        OfflineModel.load(path)


def test_it_reports_a_weights_file_with_missing_arrays(tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    with np.load(OfflineModel.WEIGHTS_PATH) as archive:
        arrays = {name: archive[name] for name in archive.files if name != "head.va.weight"}
    np.savez(path, **arrays)
    with pytest.raises(OfflineWeightsError, match="corrupt or incomplete"):
        OfflineModel.load(path)


def test_it_reports_a_weights_file_of_another_format(tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    np.savez(path, metadata=np.array('{"format": "something-else"}'))
    with pytest.raises(OfflineWeightsError, match="format"):
        OfflineModel.load(path)


def test_it_never_imports_torch() -> None:
    code = (
        "import sys, numpy as np\n"
        "from seke_app.engine.offline import OfflineModel\n"
        "OfflineModel.load().predict_arrays(np.zeros((1, 48, 48), np.float32))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
