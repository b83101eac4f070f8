"""Train the offline annotator's expression CNN and export it for numpy inference.

Run as::

    python -m seke_app.engine.offline.train \\
        --ferplus-train ../shared/data/ferplus_train \\
        --affectnet-train ../shared/data/affectnet_train

It needs torch (``pip install 'seke[train]'``). Nothing else in SEKE imports this
module, so the annotator itself runs without torch.

Data: the FER+ training faces with their 10-annotator vote distributions as soft
targets, and the AffectNet training faces (one-hot targets with label smoothing,
plus valence/arousal).

Class balance. FER+ has almost no fear, disgust and contempt (90, 11 and 14 faces
by plurality), so those classes come mostly from AffectNet, a different domain
(colour web photos, looser crops). Three choices deal with that:

* Classes are drawn with probability proportional to the square root of their
  size, AffectNet faces four times as often as FER+ faces of the same class. With
  ``--soft-sampling`` (default) a face counts towards every class in proportion
  to its votes, so the 376 FER+ faces with at least three fear votes are drawn
  partly at fear's rate.
* The remaining imbalance is removed with logit adjustment (Menon et al., ICLR
  2021): the loss sees ``logits + log(prior)``, so the plain logits estimate
  class probabilities under a uniform prior, which is what a balanced
  evaluation wants. With ``--per-source-prior`` (default) each source has its
  own prior. With one pooled prior, "this looks like an AffectNet photo" is
  itself evidence for fear, disgust and contempt, and the network learnt exactly
  that: on FER faces it almost never named them (the recalls per class, before
  and after, are in ``bench/README.md``). With a prior per source, knowing the
  source tells the network nothing more about the class.
* ``--affectnet-crop 0.9`` (default) keeps the central part of each AffectNet
  image, which brings its faces nearer FER's scale.

The valence/arousal head is trained on the AffectNet faces only (masked loss).

A stratified part of both training sets (10% of FER+, 15% of AffectNet) is held
out; after every epoch the network and an exponential moving average of its
weights are scored there, and whichever scores the best balanced accuracy over
all epochs is exported. The evaluation sets (ferplus, affectnet_val, ckplus_facs)
are never read. The defaults (48 epochs) are the settings of the shipped weights,
whose ``metadata`` records every option used and the training time. Their
accuracy (``python bench/offline_accuracy.py --data ../shared/data``) and how
they were chosen among the settings tried are in ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.optim.swa_utils import AveragedModel

from seke_app.engine.offline.model import (
    WEIGHTS_FORMAT,
    OfflineModel,
    preprocess_image,
    square_gray,
)
from seke_app.engine.vocab import EXPRESSIONS

INPUT_SIZE = 48
# Conv widths; a 2x2 max-pool follows the convolutions whose index is in POOL_AFTER.
WIDTHS = (16, 32, 48, 48, 96, 96, 192)
POOL_AFTER = frozenset({1, 3, 5, 6})
HIDDEN = 128
AFFECTNET_SMOOTHING = 0.1


@dataclass
class Split:
    """Images (N, 48, 48) uint8 with soft targets, plurality labels and optional VA."""

    images: npt.NDArray[np.uint8]
    targets: npt.NDArray[np.float32]  # (N, 8) probabilities in EXPRESSIONS order.
    labels: npt.NDArray[np.int64]
    va: npt.NDArray[np.float32]  # (N, 2); meaningful only where has_va.
    has_va: npt.NDArray[np.bool_]
    is_affectnet: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: npt.NDArray[np.int64]) -> Split:
        return Split(*(getattr(self, name)[index] for name in _SPLIT_FIELDS))

    @staticmethod
    def concat(parts: Sequence[Split]) -> Split:
        fields = (np.concatenate([getattr(p, name) for p in parts]) for name in _SPLIT_FIELDS)
        return Split(*fields)


_SPLIT_FIELDS = ("images", "targets", "labels", "va", "has_va", "is_affectnet")


def _read_manifest(folder: Path) -> list[dict[str, str]]:
    with (folder / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _load_image(
    path: Path, face_size: int = INPUT_SIZE, crop: float = 1.0
) -> npt.NDArray[np.uint8]:
    """A face as the network sees it.

    ``crop`` below 1 keeps only that central fraction of the image's side first;
    ``face_size`` below 48 shrinks the face inside an edge-padded 48-pixel frame.
    """
    with Image.open(path) as image:
        if crop < 1.0:
            square = square_gray(image)
            side = square.size[0]
            margin = side * (1.0 - crop) / 2.0
            image = square.crop((margin, margin, side - margin, side - margin))
        pixels = preprocess_image(image, face_size)
    before = (INPUT_SIZE - face_size) // 2
    after = INPUT_SIZE - face_size - before
    return np.round(np.pad(pixels, (before, after), mode="edge") * 255.0).astype(np.uint8)


def load_ferplus(folder: Path) -> Split:
    """FER+ faces with their vote distributions over the eight expressions."""
    rows = _read_manifest(folder)
    votes = np.array(
        [[float(row[f"votes_{name}"]) for name in EXPRESSIONS] for row in rows], np.float32
    )
    targets = votes / votes.sum(axis=1, keepdims=True)
    labels = np.array([EXPRESSIONS.index(row["expression"]) for row in rows], np.int64)
    images = np.stack([_load_image(folder / row["file"]) for row in rows])
    n = len(rows)
    return Split(
        images, targets, labels, np.zeros((n, 2), np.float32), np.zeros(n, bool), np.zeros(n, bool)
    )


def load_affectnet(folder: Path, face_size: int = INPUT_SIZE, crop: float = 1.0) -> Split:
    """AffectNet faces with smoothed one-hot targets and VA.

    AffectNet's crops are looser than FER2013's: they show more hair and
    background around a smaller face. ``crop`` below 1 keeps the central part of
    each image so that its faces come nearer FER's scale (0.9 keeps 81 % of the
    area). ``face_size`` below 48 goes the other way and shrinks the faces inside
    an edge-padded frame; a trial with 40 pixels (with zoom 0.85-1.2 and weight
    averaging, 16 epochs) scored lower on the held-out split.
    """
    rows = _read_manifest(folder)
    labels = np.array([EXPRESSIONS.index(row["expression"]) for row in rows], np.int64)
    targets = np.full((len(rows), len(EXPRESSIONS)), AFFECTNET_SMOOTHING / len(EXPRESSIONS))
    targets[np.arange(len(rows)), labels] += 1.0 - AFFECTNET_SMOOTHING
    va = np.array([[float(row["valence"]), float(row["arousal"])] for row in rows], np.float32)
    images = np.stack([_load_image(folder / row["file"], face_size, crop) for row in rows])
    n = len(rows)
    return Split(images, targets.astype(np.float32), labels, va, np.ones(n, bool), np.ones(n, bool))


def stratified_split(
    labels: npt.NDArray[np.int64], fraction: float, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Indices (train, held-out), holding out ``fraction`` of every class (at least one)."""
    held: list[npt.NDArray[np.int64]] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held.append(members[: max(1, round(len(members) * fraction))])
    held_out = np.sort(np.concatenate(held))
    train = np.setdiff1d(np.arange(len(labels)), held_out)
    return train, held_out


class ExpressionNet(nn.Module):
    """VGG-like 3x3 conv stack with batch norm, an expression head and a VA head."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for index, width in enumerate(WIDTHS):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if index in POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        side = INPUT_SIZE // 2 ** len(POOL_AFTER)
        self.hidden = nn.Linear(channels * side * side, HIDDEN)
        self.expression = nn.Linear(HIDDEN, len(EXPRESSIONS))
        self.va = nn.Linear(HIDDEN, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.dropout(torch.flatten(self.features(x), 1), 0.25, self.training)
        x = F.dropout(F.relu(self.hidden(x)), 0.4, self.training)
        return self.expression(x), torch.tanh(self.va(x))


def augment(
    x: torch.Tensor, generator: torch.Generator, zoom: tuple[float, float] = (0.88, 1.12)
) -> torch.Tensor:
    """Random flips, rotations, zooms, shifts, lighting and small occlusions of a batch."""
    n = len(x)

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    angle = uniform(-12.0, 12.0) * math.pi / 180.0
    scale = uniform(*zoom)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) / scale * flip
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale * flip
    theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, :, 2] = torch.stack([uniform(-0.12, 0.12), uniform(-0.12, 0.12)], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(0.7, 1.3).view(n, 1, 1, 1)
    brightness = uniform(-0.1, 0.1).view(n, 1, 1, 1)
    x = ((x - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
    return _erase(x, generator)


def _erase(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Hiding a random patch of some faces makes the network use more than one
    # facial region, which helps with the partial occlusions of web photos.
    n, _, h, w = x.shape
    size = torch.randint(8, 17, (n,), generator=generator)
    top = (torch.rand(n, generator=generator) * (h - size)).long()
    left = (torch.rand(n, generator=generator) * (w - size)).long()
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    inside = (
        (rows >= top.view(n, 1, 1))
        & (rows < (top + size).view(n, 1, 1))
        & (cols >= left.view(n, 1, 1))
        & (cols < (left + size).view(n, 1, 1))
    )
    chosen = (torch.rand(n, generator=generator) < 0.4).view(n, 1, 1)
    return x.masked_fill((inside & chosen).unsqueeze(1), 0.5)


def sampling_weights(
    train: Split, power: float, affectnet_boost: float, soft: bool = False
) -> npt.NDArray[np.float64]:
    """Per-item draw weights: class mass ~ count**power, AffectNet items boosted within a class.

    By default an item belongs to its plurality class. With ``soft`` it belongs to
    every class in proportion to its target, so a FER+ face with three fear votes
    out of ten is drawn partly at fear's rate; class sizes are then target masses.
    """
    shares = train.targets.astype(np.float64) if soft else np.eye(len(EXPRESSIONS))[train.labels]
    membership = shares * np.where(train.is_affectnet, affectnet_boost, 1.0)[:, None]
    sizes, boosted = shares.sum(axis=0), membership.sum(axis=0)
    per_class = np.divide(sizes**power, boosted, out=np.zeros(len(EXPRESSIONS)), where=boosted > 0)
    weights = membership @ per_class
    normalised: npt.NDArray[np.float64] = weights / weights.sum()
    return normalised


def batches(
    train: Split, weights: npt.NDArray[np.float64], count: int, size: int, rng: np.random.Generator
) -> Iterator[npt.NDArray[np.int64]]:
    drawn = rng.choice(len(train), size=count, replace=True, p=weights)
    for start in range(0, count - size + 1, size):
        yield drawn[start : start + size]


@dataclass
class Normalizer:
    mean: float
    std: float

    def tensor(self, images: npt.NDArray[np.uint8]) -> torch.Tensor:
        return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


def train_step(
    net: ExpressionNet,
    batch: Split,
    log_prior: torch.Tensor,
    norm: Normalizer,
    generator: torch.Generator,
    zoom: tuple[float, float],
) -> tuple[torch.Tensor, float]:
    """Loss of one batch: logit-adjusted soft cross-entropy plus masked VA error."""
    x = norm.apply(augment(norm.tensor(batch.images), generator, zoom))
    logits, va = net(x)
    targets = torch.from_numpy(batch.targets)
    prior = log_prior[torch.from_numpy(batch.is_affectnet.astype(np.int64))]
    expression_loss = -(targets * F.log_softmax(logits + prior, dim=1)).sum(dim=1).mean()
    mask = torch.from_numpy(batch.has_va)
    va_loss = torch.zeros(())
    if mask.any():
        va_loss = F.mse_loss(va[mask], torch.from_numpy(batch.va[mask]))
    return expression_loss + va_loss, float(expression_loss.detach())


@torch.no_grad()
def predict(
    net: ExpressionNet, split: Split, norm: Normalizer
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    net.eval()
    logits, va = [], []
    for start in range(0, len(split), 512):
        out = net(norm.apply(norm.tensor(split.images[start : start + 512])))
        logits.append(out[0].numpy())
        va.append(out[1].numpy())
    return np.concatenate(logits), np.concatenate(va)


def held_out_metrics(
    probs: npt.NDArray[np.float32], va: npt.NDArray[np.float32], split: Split
) -> dict[str, float]:
    """Balanced accuracy over both sources, accuracy per source, VA RMSE on AffectNet."""
    predicted = probs.argmax(axis=1)
    correct = predicted == split.labels
    recalls = [correct[split.labels == c].mean() for c in np.unique(split.labels)]
    errors = va[split.has_va] - split.va[split.has_va]
    return {
        "balanced_accuracy": float(np.mean(recalls)),
        "ferplus_accuracy": float(correct[~split.is_affectnet].mean()),
        "affectnet_accuracy": float(correct[split.is_affectnet].mean()),
        "va_rmse": float(np.sqrt((errors**2).mean())),
    }


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    assert bn.running_var is not None and bn.running_mean is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


@torch.no_grad()
def export_arrays(net: ExpressionNet) -> tuple[list[str], dict[str, npt.NDArray[np.float16]]]:
    """Layer kinds and float16 arrays in the layout ``model.OfflineModel`` reads."""
    kinds: list[str] = []
    arrays: dict[str, npt.NDArray[np.float16]] = {}
    modules = list(net.features)
    for position, module in enumerate(modules):
        if isinstance(module, nn.Conv2d):
            batch_norm = modules[position + 1]
            assert isinstance(batch_norm, nn.BatchNorm2d)
            weight, bias = _fold(module, batch_norm)
            arrays[f"layer{len(kinds)}.weight"] = weight.numpy().astype(np.float16)
            arrays[f"layer{len(kinds)}.bias"] = bias.numpy().astype(np.float16)
            kinds.append("conv3x3_relu")
        elif isinstance(module, nn.MaxPool2d):
            kinds.append("maxpool2")
    kinds.append("flatten")
    arrays[f"layer{len(kinds)}.weight"] = net.hidden.weight.numpy().astype(np.float16)
    arrays[f"layer{len(kinds)}.bias"] = net.hidden.bias.numpy().astype(np.float16)
    kinds.append("dense_relu")
    for name, head in (("expression", net.expression), ("va", net.va)):
        arrays[f"head.{name}.weight"] = head.weight.numpy().astype(np.float16)
        arrays[f"head.{name}.bias"] = head.bias.numpy().astype(np.float16)
    return kinds, arrays


def write_weights(path: Path, net: ExpressionNet, metadata: dict[str, Any]) -> None:
    kinds, arrays = export_arrays(net)
    metadata = {**metadata, "format": WEIGHTS_FORMAT, "layers": kinds}
    metadata["parameter_count"] = int(sum(a.size for a in arrays.values()))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        contents: dict[str, npt.NDArray[Any]] = {"metadata": np.array(json.dumps(metadata))}
        contents.update(arrays)
        # numpy's stubs cannot tell that no array is named like the keyword
        # argument ``allow_pickle``, hence the ignore.
        np.savez_compressed(handle, **contents)  # type: ignore[arg-type]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ferplus-train", type=Path, required=True)
    parser.add_argument("--affectnet-train", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=48)
    parser.add_argument("--samples-per-epoch", type=int, default=12288)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, default=OfflineModel.WEIGHTS_PATH)
    parser.add_argument("--seed", type=int, default=20250101)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--class-power", type=float, default=0.5)
    parser.add_argument("--affectnet-boost", type=float, default=4.0)
    parser.add_argument("--ema", type=float, default=0.998, help="weight EMA decay; 0 disables")
    parser.add_argument("--affectnet-face-size", type=int, default=INPUT_SIZE)
    parser.add_argument("--affectnet-crop", type=float, default=0.9)
    parser.add_argument(
        "--soft-sampling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw classes by vote mass rather than by plurality label",
    )
    parser.add_argument(
        "--per-source-prior",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="logit adjustment with each source's own class distribution",
    )
    parser.add_argument(
        "--zoom", type=float, nargs=2, default=(0.88, 1.12), metavar=("LOW", "HIGH")
    )
    return parser.parse_args(argv)


def load_data(args: argparse.Namespace, rng: np.random.Generator) -> tuple[Split, Split]:
    """Training and held-out splits of FER+ (10% held out) and AffectNet (15%)."""
    parts_train, parts_held = [], []
    for loader, folder, fraction in (
        (load_ferplus, args.ferplus_train, 0.10),
        (
            partial(load_affectnet, face_size=args.affectnet_face_size, crop=args.affectnet_crop),
            args.affectnet_train,
            0.15,
        ),
    ):
        data = loader(folder)
        train_index, held_index = stratified_split(data.labels, fraction, rng)
        parts_train.append(data.subset(train_index))
        parts_held.append(data.subset(held_index))
    return Split.concat(parts_train), Split.concat(parts_held)


def class_log_prior(
    train: Split, weights: npt.NDArray[np.float64], per_source: bool
) -> torch.Tensor:
    """Log of the soft-target class distribution the sampler produces, one row per source.

    Row 0 is for FER+ faces, row 1 for AffectNet faces. With ``per_source`` each
    row is that source's own distribution; otherwise both rows are the pooled one.
    """
    everyone = np.ones(len(train), bool)
    groups = (~train.is_affectnet, train.is_affectnet) if per_source else (everyone, everyone)
    rows = []
    for members in groups:
        prior = (weights[members, None] * train.targets[members]).sum(axis=0)
        # A class a source never shows would get log(0); a floor keeps the loss finite.
        rows.append(np.log(np.maximum(prior / prior.sum(), 1e-6)))
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.monotonic()
    train, held = load_data(args, rng)
    pixels = train.images.astype(np.float32) / 255.0
    norm = Normalizer(float(pixels.mean()), float(pixels.std()))
    weights = sampling_weights(train, args.class_power, args.affectnet_boost, args.soft_sampling)
    log_prior = class_log_prior(train, weights, args.per_source_prior)
    print(
        f"loaded {len(train)} training / {len(held)} held-out faces "
        f"in {time.monotonic() - started:.0f}s",
        flush=True,
    )

    trainer = Trainer.create(args, log_prior, norm, generator)
    best: dict[str, Any] = {"balanced_accuracy": -1.0}
    for epoch in range(1, args.epochs + 1):
        loss = trainer.epoch(
            train, batches(train, weights, args.samples_per_epoch, args.batch_size, rng)
        )
        for name, candidate in trainer.candidates().items():
            metrics = held_out_metrics(*predict(candidate, held, norm), held)
            print(
                f"epoch {epoch:2d}/{args.epochs} {name:<3}  loss {loss:.3f}  "
                + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items())
                + f"  {time.monotonic() - started:.0f}s",
                flush=True,
            )
            if metrics["balanced_accuracy"] >= best["balanced_accuracy"]:
                state = {k: v.clone() for k, v in candidate.state_dict().items()}
                best = {**metrics, "epoch": epoch, "weights": name, "state": state}
    net = ExpressionNet()
    net.load_state_dict(best.pop("state"))
    net.eval()
    return {
        "net": net,
        "norm": norm,
        "best": best,
        "train": train,
        "held": held,
        "seconds": time.monotonic() - started,
    }


def _ema(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | int], torch.Tensor]:
    """An exponential moving average whose decay grows with the step count.

    Early on the average covers only about the last tenth of the steps taken,
    so the random initial weights are forgotten instead of lingering in it.
    """

    def average(
        averaged: torch.Tensor, current: torch.Tensor, count: torch.Tensor | int
    ) -> torch.Tensor:
        steps = float(count)
        rate = min(decay, (1.0 + steps) / (10.0 + steps))
        return averaged * rate + current * (1.0 - rate)

    return average


@dataclass
class Trainer:
    """The network, its optimiser and schedule, and an optional running average of it."""

    net: ExpressionNet
    averaged: AveragedModel | None
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    log_prior: torch.Tensor
    norm: Normalizer
    generator: torch.Generator
    zoom: tuple[float, float]

    @classmethod
    def create(
        cls,
        args: argparse.Namespace,
        log_prior: torch.Tensor,
        norm: Normalizer,
        generator: torch.Generator,
    ) -> Trainer:
        # Channels-last convolutions were faster on CPU when tried here (the figure
        # noted then is in the history of bench/README.md).
        net = ExpressionNet().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.05)
        steps = args.epochs * (args.samples_per_epoch // args.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps)
        # An exponential moving average of the weights (and batch-norm statistics)
        # smooths out the noise of the last steps, which a short schedule leaves.
        averaged = None
        if args.ema > 0:
            averaged = AveragedModel(net, avg_fn=_ema(args.ema), use_buffers=True)
        zoom = (args.zoom[0], args.zoom[1])
        return cls(net, averaged, optimizer, schedule, log_prior, norm, generator, zoom)

    def candidates(self) -> dict[str, ExpressionNet]:
        """The networks worth exporting: the trained one and its running average."""
        if self.averaged is None:
            return {"raw": self.net}
        module = self.averaged.module
        assert isinstance(module, ExpressionNet)
        return {"raw": self.net, "ema": module}

    def epoch(self, train: Split, drawn: Iterator[npt.NDArray[np.int64]]) -> float:
        """Train on every batch drawn; return the mean expression loss."""
        self.net.train()
        losses = []
        for index in drawn:
            loss, expression_loss = train_step(
                self.net, train.subset(index), self.log_prior, self.norm, self.generator, self.zoom
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
            self.schedule.step()
            if self.averaged is not None:
                self.averaged.update_parameters(self.net)
            losses.append(expression_loss)
        return float(np.mean(losses))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    metadata = build_metadata(args, result)
    write_weights(args.out, result["net"], metadata)
    check_export(args.out, result["held"])


# What the weights were learnt from and on what terms, written into their metadata
# (the README's "Provenance of the offline weights" says the same for people).
TRAINING_DATA_TERMS = {
    "ferplus_train": (
        "FER2013 faces (Goodfellow et al., ICML 2013 challenge; Kaggle's competition data "
        "rules) with Microsoft's FER+ votes (Barsoum et al., ICMI 2016; label files under "
        "the MIT licence); research data, not redistributed"
    ),
    "affectnet_train": (
        "AffectNet faces with expression, valence and arousal (Mollahosseini, Hasani & "
        "Mahoor, 2017), released only under the AffectNet licence agreement: non-commercial "
        "research, no redistribution"
    ),
}
WEIGHTS_USE = (
    "Learnt from the data above, so bound by their terms: treat the weights as for "
    "non-commercial research. For other use, retrain on data you may use that way."
)
RETRAIN = (
    "python -m seke_app.engine.offline.train --ferplus-train VOTES_DIR --affectnet-train "
    "VA_DIR (VOTES_DIR/manifest.csv: file, expression, votes_<expression> for the 8 "
    "expressions; VA_DIR/manifest.csv: file, expression, valence, arousal), then "
    "python manage.py seke_fit_likelihoods --data DIR (DIR/affectnet_train, DIR/ferplus_train)"
)


def build_metadata(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    train, held = result["train"], result["held"]
    return {
        "architecture": f"VGG-like CNN, 3x3 convs {list(WIDTHS)} with BN folded, "
        f"max-pool after convs {sorted(POOL_AFTER)}, dense {HIDDEN}, heads 8 + VA (tanh)",
        "input_size": INPUT_SIZE,
        "input_mean": result["norm"].mean,
        "input_std": result["norm"].std,
        "expressions": list(EXPRESSIONS),
        "training_data": {
            "ferplus_train": {
                "train": int((~train.is_affectnet).sum()),
                "held_out": int((~held.is_affectnet).sum()),
            },
            "affectnet_train": {
                "train": int(train.is_affectnet.sum()),
                "held_out": int(held.is_affectnet.sum()),
            },
        },
        "training_data_sources": {
            "ferplus_train": args.ferplus_train.name,
            "affectnet_train": args.affectnet_train.name,
        },
        "training_data_terms": TRAINING_DATA_TERMS,
        "use": WEIGHTS_USE,
        "retrain": RETRAIN,
        "epochs": args.epochs,
        "samples_per_epoch": args.samples_per_epoch,
        "best_epoch": result["best"]["epoch"],
        "exported_weights": result["best"]["weights"],
        "held_out": {
            k: round(v, 4) for k, v in result["best"].items() if k not in ("epoch", "weights")
        },
        "seed": args.seed,
        "class_power": args.class_power,
        "affectnet_boost": args.affectnet_boost,
        "ema": args.ema,
        "affectnet_face_size": args.affectnet_face_size,
        "affectnet_crop": args.affectnet_crop,
        "per_source_prior": args.per_source_prior,
        "soft_sampling": args.soft_sampling,
        "zoom": list(args.zoom),
        "train_seconds": round(result["seconds"]),
        "torch_version": torch.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def check_export(path: Path, held: Split) -> None:
    """Reload the file with the numpy model and report its held-out figures."""
    model = OfflineModel.load(path)
    prediction = model.predict_arrays(held.images.astype(np.float32) / 255.0)
    metrics = held_out_metrics(prediction.probs, prediction.va, held)
    size_kb = path.stat().st_size / 1024
    print(
        f"wrote {path} ({size_kb:.0f} KiB, {model.parameter_count} parameters); numpy "
        + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()),
        flush=True,
    )


if __name__ == "__main__":
    main()
