"""The offline annotator's training script, on tiny drawn datasets.

It needs torch (the ``train`` extra), so without it these tests skip; CI installs
the extra and runs them. One short training run checks that the exported file is
what the numpy model reads and predicts like the torch network it came from.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from seke_app.engine.offline import OfflineModel
from seke_app.engine.vocab import EXPRESSIONS

torch = pytest.importorskip(
    "torch", reason="the training script needs torch: pip install -e '.[train]'"
)
train = pytest.importorskip("seke_app.engine.offline.train")

PER_CLASS = 3


def _drawn(index: int, size: int, mode: str) -> Image.Image:
    """A face whose mouth and eyes depend on the class index, on a grey frame."""
    rng = np.random.default_rng(index)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(60, 120, 3)))
    draw = ImageDraw.Draw(image)
    s = size / 48
    draw.ellipse((8 * s, 4 * s, 40 * s, 46 * s), fill=(210, 180, 160))
    label = index % len(EXPRESSIONS)
    eye = (1 + label % 3) * s
    for x in (18, 30):
        draw.ellipse(((x - eye) * s, 18 * s - eye, (x + eye) * s, 18 * s + eye), fill=(20, 20, 20))
    draw.arc((16 * s, 28 * s, 32 * s, (34 + label) * s), 0, 180 + 20 * label, fill=(90, 0, 0))
    return image.convert(mode)


def _ferplus_like(folder: Path) -> None:
    (folder / "images").mkdir(parents=True)
    columns = [f"votes_{name}" for name in EXPRESSIONS]
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "expression", *columns, "votes_unknown", "votes_nf"])
        for index in range(PER_CLASS * len(EXPRESSIONS)):
            label = index % len(EXPRESSIONS)
            votes = [0] * len(EXPRESSIONS)
            votes[label] = 8
            votes[(label + 1) % len(EXPRESSIONS)] = 2
            name = f"images/f{index:03d}.png"
            _drawn(index, 48, "L").save(folder / name)
            writer.writerow([name, EXPRESSIONS[label], *votes, 0, 0])


def _affectnet_like(folder: Path) -> None:
    (folder / "images").mkdir(parents=True)
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "expression", "valence", "arousal"])
        for index in range(PER_CLASS * len(EXPRESSIONS)):
            label = index % len(EXPRESSIONS)
            name = f"images/a{index:03d}.jpg"
            _drawn(index + 100, 96, "RGB").save(folder / name)
            writer.writerow([name, EXPRESSIONS[label], f"{label / 8 - 0.4:.3f}", "0.2"])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("training")
    _ferplus_like(root / "ferplus_train")
    _affectnet_like(root / "affectnet_train")
    return {"ferplus": root / "ferplus_train", "affectnet": root / "affectnet_train"}


def _args(data: dict[str, Path], out: Path, *extra: str) -> Any:
    return train.parse_args(
        [
            "--ferplus-train",
            str(data["ferplus"]),
            "--affectnet-train",
            str(data["affectnet"]),
            "--epochs",
            "2",
            "--samples-per-epoch",
            "128",
            "--batch-size",
            "32",
            "--threads",
            "1",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_a_short_run_exports_weights_the_numpy_model_reproduces(
    data: dict[str, Path], tmp_path: Path
) -> None:
    args = _args(data, tmp_path / "weights.npz", "--per-source-prior", "--affectnet-crop", "0.9")
    result = train.run(args)
    metadata = train.build_metadata(args, result)
    train.write_weights(args.out, result["net"], metadata)

    model = OfflineModel.load(args.out)
    assert model.metadata["per_source_prior"] is True
    assert model.metadata["affectnet_crop"] == 0.9
    assert model.metadata["training_data"]["ferplus_train"]["held_out"] == len(EXPRESSIONS)
    # The weights say what they were learnt from, on what terms, and how to retrain.
    assert "non-commercial research" in model.metadata["training_data_terms"]["affectnet_train"]
    assert "FER+" in model.metadata["training_data_terms"]["ferplus_train"]
    assert model.metadata["retrain"].startswith("python -m seke_app.engine.offline.train")
    held = result["held"]
    logits, va = train.predict(result["net"], held, result["norm"])
    torch_probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    numpy_prediction = model.predict_arrays(held.images.astype(np.float32) / 255.0)
    # float16 weights and folded batch norm: equal up to rounding.
    assert np.abs(numpy_prediction.probs - torch_probs).max() < 0.02
    assert np.abs(numpy_prediction.va - va).max() < 0.02
    assert np.array_equal(numpy_prediction.probs.argmax(axis=1), torch_probs.argmax(axis=1))


def test_the_per_source_prior_gives_each_source_its_own_class_distribution(
    data: dict[str, Path],
) -> None:
    args = _args(data, Path("unused.npz"))
    rng = np.random.default_rng(0)
    split, _ = train.load_data(args, rng)
    # Make the sources differ: FER+ faces are mostly neutral, AffectNet faces are not.
    split.targets[~split.is_affectnet] = np.eye(len(EXPRESSIONS), dtype=np.float32)[0]
    weights = np.full(len(split), 1.0 / len(split))

    pooled = train.class_log_prior(split, weights, per_source=False).numpy()
    separate = train.class_log_prior(split, weights, per_source=True).numpy()

    assert np.allclose(pooled[0], pooled[1])
    assert np.allclose(np.exp(separate).sum(axis=1), 1.0, atol=1e-5)
    neutral = EXPRESSIONS.index("neutral")
    assert separate[0, neutral] > pooled[0, neutral] > separate[1, neutral]
    affectnet = split.targets[split.is_affectnet].mean(axis=0)
    assert np.allclose(np.exp(separate[1]), affectnet / affectnet.sum(), atol=1e-5)


def test_the_affectnet_crop_keeps_the_centre_of_the_image(tmp_path: Path) -> None:
    image = Image.new("L", (100, 100), 0)
    ImageDraw.Draw(image).rectangle((25, 25, 74, 74), fill=255)
    path = tmp_path / "square.png"
    image.save(path)

    whole = train._load_image(path)
    centre = train._load_image(path, crop=0.5)

    assert 0.2 < (whole > 128).mean() < 0.3
    assert (centre > 128).mean() > 0.95


def test_sampling_gives_classes_mass_by_size_and_soft_sampling_follows_the_votes(
    data: dict[str, Path],
) -> None:
    args = _args(data, Path("unused.npz"))
    split, _ = train.load_data(args, np.random.default_rng(0))
    hard = train.sampling_weights(split, power=0.5, affectnet_boost=4.0)
    counts = np.bincount(split.labels, minlength=len(EXPRESSIONS))
    class_mass = np.bincount(split.labels, weights=hard, minlength=len(EXPRESSIONS))
    assert np.allclose(class_mass, np.sqrt(counts) / np.sqrt(counts).sum())
    first = EXPRESSIONS.index("neutral")
    members = np.flatnonzero(split.labels == first)
    ratio = (
        hard[members][split.is_affectnet[members]][0]
        / hard[members][~split.is_affectnet[members]][0]
    )
    assert ratio == pytest.approx(4.0)

    soft = train.sampling_weights(split, power=0.5, affectnet_boost=4.0, soft=True)
    assert soft.sum() == pytest.approx(1.0)
    soft_mass = (soft[:, None] * split.targets).sum(axis=0)
    sizes = split.targets.sum(axis=0)
    assert np.allclose(soft_mass, np.sqrt(sizes) / np.sqrt(sizes).sum(), atol=0.02)
