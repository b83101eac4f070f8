"""Knowledge fusion: scripted likelihoods, the offline backend with known labels, and
the command that fits the likelihoods."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.management import call_command
from PIL import Image

from seke_app.engine.fusion import (
    KnownEvidence,
    expression_posterior,
    known_log_likelihoods,
    va_estimate,
)
from seke_app.engine.likelihoods import (
    FIT_COMMAND,
    IMAGE_WEIGHTS,
    VARIANCE_FLOOR,
    Component,
    HeadModel,
    Likelihoods,
    VAMixture,
    au_probability,
    default_likelihoods,
    fit_mixture,
    held_out_indices,
)
from seke_app.engine.offline.backend import OfflineBackend
from seke_app.engine.offline.model import OfflineModel, OfflinePrediction
from seke_app.engine.types import AnnotationRequest, KnownLabels, VerificationRequest
from seke_app.engine.uamc import UAMCParams, run_uamc
from seke_app.engine.vocab import EXPRESSIONS, Vocabulary

FaceBytes = Callable[..., bytes]
TWO = Vocabulary(expressions=("neutral", "happiness"), aus=(6, 12, 25))
SD = 0.1


def _gaussian(mean: tuple[float, float], sd: float = SD, n: int = 100) -> VAMixture:
    return VAMixture((Component(1.0, mean, ((sd * sd, 0.0), (0.0, sd * sd))),), n)


def scripted(
    *,
    image_weight: float = 1.0,
    gain: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 0.0), (0.0, 0.0)),
) -> Likelihoods:
    """Neutral at the origin, happiness at (+0.7, +0.1), each an isotropic Gaussian."""
    va = {e: _gaussian((0.0, 0.0)) for e in EXPRESSIONS}
    va["happiness"] = _gaussian((0.7, 0.1))
    head = HeadModel({e: (0.0, 0.0) for e in EXPRESSIONS}, gain, (0.1, 0.1), 10)
    return Likelihoods(va, head, image_weight, {})


def _normal(x: float, mean: float, sd: float = SD) -> float:
    return math.exp(-0.5 * ((x - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))


# --- The maths on scripted inputs ------------------------------------------------------


def test_a_happy_va_moves_a_posterior_that_slightly_prefers_neutral_to_happiness() -> None:
    image = np.array([[0.55, 0.45]])
    evidence = KnownEvidence.of(KnownLabels(valence=0.65, arousal=0.1), TWO)
    posterior = expression_posterior(image, evidence, TWO, scripted())
    neutral = 0.55 * _normal(0.65, 0.0) * _normal(0.1, 0.0)
    happy = 0.45 * _normal(0.65, 0.7) * _normal(0.1, 0.1)
    assert posterior[0] == pytest.approx([neutral / (neutral + happy), happy / (neutral + happy)])
    assert posterior[0, 1] > 0.99
    assert posterior.sum(axis=1) == pytest.approx([1.0])


def test_the_product_is_normalised_for_every_view() -> None:
    views = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    evidence = KnownEvidence.of(KnownLabels(valence=0.3, arousal=0.05), TWO)
    posterior = expression_posterior(views, evidence, TWO, scripted())
    assert posterior.shape == (3, 2)
    assert posterior.sum(axis=1) == pytest.approx([1.0, 1.0, 1.0])
    # The same VA moves every view the same way: the odds ratio is the likelihood ratio.
    odds = posterior[:, 1] / posterior[:, 0] / (views[:, 1] / views[:, 0])
    assert odds == pytest.approx([odds[0]] * 3)


def test_the_image_weight_tempers_only_the_image() -> None:
    image = np.array([[0.8, 0.2]])
    evidence = KnownEvidence.of(KnownLabels(valence=0.35, arousal=0.05), TWO)
    posterior = expression_posterior(image, evidence, TWO, scripted(image_weight=0.5))
    neutral = math.sqrt(0.8) * _normal(0.35, 0.0) * _normal(0.05, 0.0)
    happy = math.sqrt(0.2) * _normal(0.35, 0.7) * _normal(0.05, 0.1)
    assert posterior[0, 1] == pytest.approx(happy / (neutral + happy))


def test_nothing_known_leaves_the_image_alone_and_a_known_expression_is_certain() -> None:
    image = np.array([[0.7, 0.3]])
    plain = expression_posterior(image, KnownEvidence(), TWO, scripted(image_weight=0.5))
    assert plain == pytest.approx(image)
    known = KnownEvidence.of(KnownLabels(expression="happiness", valence=-0.9, arousal=0.0), TWO)
    assert expression_posterior(image, known, TWO, scripted()).tolist() == [[0.0, 1.0]]


def test_a_known_expression_outside_the_vocabulary_is_not_used() -> None:
    evidence = KnownEvidence.of(KnownLabels(expression="fear", aus={6: True, 27: True}), TWO)
    assert evidence.expression is None
    assert evidence.aus == {6: True}


def test_a_rate_of_zero_never_zeroes_a_posterior() -> None:
    # CK+ never coded AU12 in its 57 neutral onset frames, nor lips parted; the rule
    # of succession gives 1/59, not 0.
    assert au_probability("neutral", 12) == pytest.approx(1 / 59)
    assert au_probability("happiness", 12) == pytest.approx(35 / 36)
    evidence = KnownEvidence.of(KnownLabels(aus={6: True, 12: True, 25: True}), TWO)
    image = np.array([[0.999, 0.001]])
    posterior = expression_posterior(image, evidence, TWO, scripted())
    assert 0.0 < posterior[0, 0] < 0.01
    expected = math.log(1 / 59) * 3
    assert known_log_likelihoods(evidence, TWO, scripted())[0] == pytest.approx(expected)


def test_absent_aus_count_against_the_expressions_that_show_them() -> None:
    evidence = KnownEvidence.of(KnownLabels(aus={6: False, 12: False, 25: False}), TWO)
    posterior = expression_posterior(np.array([[0.3, 0.7]]), evidence, TWO, scripted())
    assert posterior[0, 0] > 0.99


def test_partial_va_uses_the_marginal_of_the_mixture() -> None:
    mixture = VAMixture(
        (
            Component(0.25, (0.5, 0.0), ((0.04, 0.01), (0.01, 0.09))),
            Component(0.75, (-0.2, 0.4), ((0.01, 0.0), (0.0, 0.02))),
        ),
        50,
    )
    marginal = 0.25 * _normal(0.3, 0.5, 0.2) + 0.75 * _normal(0.3, -0.2, 0.1)
    assert mixture.log_density(0.3, None) == pytest.approx(math.log(marginal))
    arousal_only = 0.25 * _normal(0.1, 0.0, 0.3) + 0.75 * _normal(0.1, 0.4, math.sqrt(0.02))
    assert mixture.log_density(None, 0.1) == pytest.approx(math.log(arousal_only))
    # A happy valence alone still moves the posterior to happiness.
    evidence = KnownEvidence.of(KnownLabels(valence=0.7), TWO)
    posterior = expression_posterior(np.array([[0.55, 0.45]]), evidence, TWO, scripted())
    happy = 0.45 * _normal(0.7, 0.7)
    assert posterior[0, 1] == pytest.approx(happy / (happy + 0.55 * _normal(0.7, 0.0)))
    assert evidence.fused() == ("valence (arousal unknown)",)


def test_a_known_expression_pulls_va_toward_its_class() -> None:
    evidence = KnownEvidence.of(KnownLabels(expression="happiness"), TWO)
    # Without a gain the head says nothing beyond the class: the class mean.
    assert va_estimate([-0.4, 0.6], evidence, scripted()) == pytest.approx((0.7, 0.1))
    # With a gain the head's deviation from its class offset moves the estimate.
    gained = scripted(gain=((0.5, 0.0), (0.0, 0.25)))
    assert va_estimate([-0.4, 0.6], evidence, gained) == pytest.approx((0.5, 0.25))
    # Without a known expression the head is read as it is.
    assert va_estimate([-0.4, 0.6], KnownEvidence(), gained) == pytest.approx((-0.4, 0.6))


def test_partial_va_keeps_the_known_value_and_estimates_the_other() -> None:
    evidence = KnownEvidence.of(KnownLabels(expression="happiness", arousal=-0.3), TWO)
    assert va_estimate([0.0, 0.9], evidence, scripted()) == pytest.approx((0.7, -0.3))
    alone = KnownEvidence.of(KnownLabels(valence=0.2), TWO)
    assert va_estimate([0.5, 0.9], alone, scripted()) == pytest.approx((0.2, 0.9))


def test_a_known_value_that_is_not_a_number_is_refused_in_words() -> None:
    with pytest.raises(ValueError, match="the known valence nan is not a finite number"):
        KnownEvidence.of(KnownLabels(valence=float("nan"), arousal=0.0), TWO)


def test_a_mixture_of_a_tight_core_and_a_wide_halo_takes_two_components() -> None:
    rng = np.random.default_rng(0)
    core = rng.normal(0.0, 0.03, (120, 2))
    halo = rng.normal([-0.3, 0.2], 0.25, (60, 2))
    mixture = fit_mixture(np.vstack([core, halo]))
    assert len(mixture.components) >= 2
    assert sum(c.weight for c in mixture.components) == pytest.approx(1.0)
    single = fit_mixture(core[:12])
    assert len(single.components) == 1


# --- The shipped likelihoods -----------------------------------------------------------


def test_the_shipped_likelihoods_say_where_they_come_from() -> None:
    likelihoods = default_likelihoods()
    meta = likelihoods.metadata
    assert meta["command"] == FIT_COMMAND
    assert meta["source"].startswith("affectnet_train")
    assert sum(meta["faces"].values()) == 1118
    assert set(likelihoods.va) == set(EXPRESSIONS)
    assert all(m.n == meta["faces"][e] for e, m in likelihoods.va.items())
    assert likelihoods.image_weight in IMAGE_WEIGHTS
    if OfflineModel.WEIGHTS_PATH.is_file():
        # Measured with the weights that ship: the head's statistics belong to them.
        assert meta["weights"]["date"] == OfflineModel.load().metadata["date"]
        held = OfflineModel.load().metadata["training_data"]["affectnet_train"]["held_out"]
        assert likelihoods.head.n == held == sum(meta["held_out_faces"].values())


def test_the_shipped_likelihoods_name_the_well_separated_classes_from_their_mean() -> None:
    likelihoods = default_likelihoods()
    vocabulary = Vocabulary()
    # Anger's mean VA lies inside contempt's core, so it is not among these.
    for expression in ("neutral", "happiness", "sadness", "surprise", "fear", "disgust"):
        valence, arousal = likelihoods.va[expression].mean()
        evidence = KnownEvidence.of(KnownLabels(valence=valence, arousal=arousal), vocabulary)
        scores = known_log_likelihoods(evidence, vocabulary, likelihoods)
        assert vocabulary.expressions[int(np.argmax(scores))] == expression


def test_held_out_draws_take_a_share_of_every_class_in_order() -> None:
    labels = {
        "ferplus_train": ["happiness"] * 30 + ["sadness"] * 10,
        "affectnet_train": ["neutral"] * 20 + ["fear"] * 7,
    }
    first = held_out_indices(labels, 5)
    repeat = held_out_indices(labels, 5)
    assert all(np.array_equal(first[k], repeat[k]) for k in labels)
    assert len(first["ferplus_train"]) == 3 + 1
    affectnet = first["affectnet_train"]
    assert len(affectnet) == 3 + 1
    assert sum(i >= 20 for i in affectnet) == 1
    # The AffectNet draw depends on the FER+ draw before it, as in the training script.
    other = held_out_indices({**labels, "ferplus_train": ["happiness"] * 40}, 5)
    assert len(other["affectnet_train"]) == 4


# --- The offline backend with known labels ---------------------------------------------


class ScriptedModel:
    """Every view slightly prefers neutral to happiness; the VA head reads (-0.2, 0.5)."""

    metadata: dict[str, Any] = {"name": "scripted-cnn", "seed": 3, "date": "scripted"}
    probs = np.array([0.30, 0.26, 0.10, 0.08, 0.08, 0.06, 0.06, 0.06], dtype=np.float32)
    va = np.array([-0.2, 0.5], dtype=np.float32)

    def predict(
        self, images: Sequence[Image.Image], *, temperature: float = 1.0
    ) -> OfflinePrediction:
        n = len(images)
        return OfflinePrediction(np.tile(self.probs, (n, 1)), np.tile(self.va, (n, 1)))

    def predict_augmented(
        self, image: Image.Image, k: int, rng: np.random.Generator, *, temperature: float = 1.0
    ) -> OfflinePrediction:
        return self.predict([image] * k)


def _request(image: bytes, known: KnownLabels) -> AnnotationRequest:
    return AnnotationRequest(image_bytes=image, vocabulary=Vocabulary(), known=known)


def test_the_backend_votes_with_the_fused_posterior(face_bytes: FaceBytes) -> None:
    backend = OfflineBackend(ScriptedModel())
    request = _request(face_bytes(), KnownLabels(valence=0.7, arousal=0.1))
    samples = backend.sample(request, 4, 1.0)
    for sample in samples:
        assert sample.answer is not None and sample.expression_probs is not None
        assert max(sample.expression_probs, key=sample.expression_probs.__getitem__) == (
            "happiness"
        )
        assert sum(sample.expression_probs.values()) == pytest.approx(1.0, abs=1e-3)
        assert (sample.answer.valence, sample.answer.arousal) == (0.7, 0.1)
        assert "fused with the known valence/arousal" in sample.answer.evidence["expression"]
        raw = json.loads(sample.raw)
        assert raw["image_probs"]["neutral"] == pytest.approx(0.30, abs=1e-4)
        assert raw["probs"] == sample.expression_probs
    result = run_uamc(backend, request, UAMCParams())
    assert result.answer is not None and result.answer.expression == "happiness"
    assert result.confidence.expression > 0.7


def test_the_backend_completes_va_and_aus_from_a_known_expression(face_bytes: FaceBytes) -> None:
    backend = OfflineBackend(ScriptedModel())
    likelihoods = default_likelihoods()
    request = _request(face_bytes(), KnownLabels(expression="happiness"))
    expected = likelihoods.va_given_expression("happiness", ScriptedModel.va)
    for sample in backend.sample(request, 5, 1.0):
        answer = sample.answer
        assert answer is not None and answer.expression == "happiness"
        assert sample.expression_probs == {e: float(e == "happiness") for e in EXPRESSIONS}
        # Nearer happiness's mean valence than the head's -0.2.
        assert answer.valence > 0.4
        assert answer.valence == pytest.approx(expected[0], abs=0.05)
        assert answer.active_aus() == [6, 12, 25]
        assert "combined with happiness's valence/arousal" in answer.evidence["va"]
    aggregate = next(s.answer for s in backend.sample(request, 1, 1.0) if s.answer)
    reply = backend.verify(VerificationRequest(request, aggregate, ""))
    assert reply.verdict == {"expression": "confirm", "va": "confirm", "aus": "confirm"}


def test_the_backend_carries_known_aus_and_completes_the_rest(face_bytes: FaceBytes) -> None:
    backend = OfflineBackend(ScriptedModel())
    known = KnownLabels(aus={6: True, 12: True, 25: True, 4: False})
    for sample in backend.sample(_request(face_bytes(), known), 3, 1.0):
        answer = sample.answer
        assert answer is not None and answer.expression == "happiness"
        assert answer.aus[6] and answer.aus[12] and not answer.aus[4]
        assert set(answer.aus) == set(Vocabulary().aus)
        assert "4 AUs known" in answer.evidence["aus"]


def test_the_backend_refuses_unusable_known_labels_in_words(face_bytes: FaceBytes) -> None:
    backend = OfflineBackend(ScriptedModel())
    request = _request(face_bytes(), KnownLabels(valence=float("inf"), arousal=0.0))
    samples = backend.sample(request, 2, 1.0)
    assert all("cannot use the known labels" in (s.error or "") for s in samples)


# --- The command that fits the likelihoods ---------------------------------------------


class FixedModel(ScriptedModel):
    metadata: dict[str, Any] = {"name": "fixed-cnn", "seed": 11, "date": "2026-01-01T00:00:00Z"}


AFFECTNET_ROWS = [
    ("neutral", 0.0, 0.1),
    ("neutral", 0.1, -0.1),
    ("neutral", -0.1, 0.0),
    ("neutral", 0.05, 0.05),
    ("happiness", 0.7, 0.2),
    ("happiness", 0.6, 0.0),
    ("happiness", 0.8, 0.1),
]


@pytest.fixture
def data_dir(tmp_path: Path, face_bytes: FaceBytes) -> Path:
    affectnet = tmp_path / "affectnet_train"
    (affectnet / "images").mkdir(parents=True)
    with (affectnet / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "expression", "valence", "arousal"])
        for i, (expression, v, a) in enumerate(AFFECTNET_ROWS):
            (affectnet / f"images/{i}.png").write_bytes(face_bytes(seed=i))
            writer.writerow([f"images/{i}.png", expression, v, a])
    (tmp_path / "ferplus_train").mkdir()
    with (tmp_path / "ferplus_train" / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "expression"])
        writer.writerows([[f"f{i}.png", "happiness" if i % 3 else "sadness"] for i in range(12)])
    return tmp_path


def _fit(data: Path, out: Path) -> str:
    stdout = io.StringIO()
    call_command("seke_fit_likelihoods", "--data", str(data), "--out", str(out), stdout=stdout)
    return stdout.getvalue()


def test_the_command_writes_what_the_fixture_gives(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(OfflineModel, "load", lambda path=None: FixedModel())
    out = tmp_path / "likelihoods.json"
    printed = _fit(data_dir, out)
    assert f"wrote {out}" in printed and "P(VA | neutral): 4 faces" in printed
    data = json.loads(out.read_text())
    fitted = Likelihoods.from_json(data)
    meta = fitted.metadata
    assert meta["faces"] == {"neutral": 4, "happiness": 3}
    assert meta["weights"] == {"name": "fixed-cnn", "date": "2026-01-01T00:00:00Z"}
    assert meta["command"] == FIT_COMMAND
    # Too few faces for more than one Gaussian: the class mean and the maximum-
    # likelihood covariance plus the floor.
    for expression in ("neutral", "happiness"):
        points = np.array([(v, a) for e, v, a in AFFECTNET_ROWS if e == expression])
        (component,) = fitted.va[expression].components
        assert component.mean == pytest.approx(tuple(points.mean(axis=0)), abs=1e-6)
        expected = np.cov(points.T, bias=True) + VARIANCE_FLOOR * np.eye(2)
        assert np.array(component.covariance) == pytest.approx(expected, abs=1e-6)
    labels = {
        "ferplus_train": ["happiness" if i % 3 else "sadness" for i in range(12)],
        "affectnet_train": [e for e, _, _ in AFFECTNET_ROWS],
    }
    held = held_out_indices(labels, 11)["affectnet_train"]
    assert sum(meta["held_out_faces"].values()) == len(held) == fitted.head.n == 2
    # The head reads the same on every face: its offsets are that reading.
    assert fitted.head.offsets["happiness"] == pytest.approx((-0.2, 0.5), abs=1e-6)
    assert fitted.image_weight in IMAGE_WEIGHTS
    # A second run computes the same and leaves the file alone.
    again = _fit(data_dir, out)
    assert "unchanged" in again and json.loads(out.read_text()) == data


def test_the_command_says_what_changed(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(OfflineModel, "load", lambda path=None: FixedModel())
    out = tmp_path / "likelihoods.json"
    _fit(data_dir, out)
    manifest = data_dir / "affectnet_train" / "manifest.csv"
    manifest.write_text(manifest.read_text().replace("0.7,0.2", "0.9,0.2"))
    printed = _fit(data_dir, out)
    assert "P(VA | happiness): 3 faces, 1 components, mean (+0.767, +0.100) (was 3 faces" in (
        printed
    )
    assert "mean (+0.700, +0.100))" in printed
    assert f"wrote {out}" in printed
