"""The offline annotator's backend on a small stand-in network and drawn faces."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from PIL import Image

from seke_app.engine.offline.backend import OfflineBackend
from seke_app.engine.offline.model import OfflineModel, OfflinePrediction
from seke_app.engine.types import AnnotationRequest, Answer, VerificationRequest
from seke_app.engine.uamc import UAMCParams, run_uamc
from seke_app.engine.vocab import EXPRESSIONS, Vocabulary

FaceBytes = Callable[..., bytes]


class TinyModel:
    """A stand-in for the CNN with the same interface.

    Its logits are a fixed linear function of two image statistics (mean and
    standard deviation of the grey levels), so its predictions are deterministic
    for an image, and each test-time view jitters those statistics with the given
    generator, as shifting and relighting a real view would.
    """

    metadata: dict[str, Any] = {"name": "tiny-test-cnn"}

    def __init__(self) -> None:
        rng = np.random.default_rng(7)
        self.weights = rng.normal(0, 3, (3, len(EXPRESSIONS)))
        self.va_weights = rng.normal(0, 1, (3, 2))

    def _features(self, image: Image.Image) -> np.ndarray:
        grey = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
        return np.array([grey.mean(), grey.std(), 1.0])

    def _predict(self, features: np.ndarray, temperature: float) -> OfflinePrediction:
        logits = features @ self.weights / temperature
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        va = np.tanh(features @ self.va_weights).astype(np.float32)
        return OfflinePrediction(probs, va)

    def predict(
        self, images: Sequence[Image.Image], *, temperature: float = 1.0
    ) -> OfflinePrediction:
        return self._predict(np.stack([self._features(i) for i in images]), temperature)

    def predict_augmented(
        self, image: Image.Image, k: int, rng: np.random.Generator, *, temperature: float = 1.0
    ) -> OfflinePrediction:
        base = self._features(image)
        views = base + np.c_[rng.normal(0, 0.3, (k, 2)), np.zeros(k)]
        return self._predict(views, temperature)


def request_for(image: bytes, vocabulary: Vocabulary | None = None) -> AnnotationRequest:
    return AnnotationRequest(image_bytes=image, vocabulary=vocabulary or Vocabulary())


def test_it_draws_k_samples_in_the_vocabulary(face_bytes: FaceBytes) -> None:
    backend = OfflineBackend(TinyModel())
    vocabulary = Vocabulary()
    samples = backend.sample(request_for(face_bytes()), 6, 1.0)
    assert len(samples) == 6
    for sample in samples:
        assert sample.kind == "sample" and sample.answer is not None
        assert sample.answer.expression in vocabulary.expressions
        assert set(sample.answer.aus) == set(vocabulary.aus)
        assert -1.0 <= sample.answer.valence <= 1.0 and -1.0 <= sample.answer.arousal <= 1.0
        assert "offline CNN baseline" in sample.answer.evidence["expression"]
        assert json.loads(sample.raw)["answer"] == sample.answer.to_json()
        assert sample.usage.requests == 0 and sample.usage.cost_usd == 0.0
    assert backend.name == "offline" and backend.model == "tiny-test-cnn"


def test_it_is_reproducible_for_the_same_image_bytes(face_bytes: FaceBytes) -> None:
    image = face_bytes(seed=3)
    first, second = OfflineBackend(TinyModel()), OfflineBackend(TinyModel())
    for _ in range(2):
        a = first.sample(request_for(image), 5, 1.0)
        b = second.sample(request_for(image), 5, 1.0)
        assert [s.raw for s in a] == [s.raw for s in b]
    # Later calls on the same backend draw new samples rather than repeating.
    again = first.sample(request_for(image), 5, 1.0)
    assert [s.raw for s in again] != [s.raw for s in a]


def test_it_samples_different_images_differently(face_bytes: FaceBytes) -> None:
    backend = OfflineBackend(TinyModel())
    a = backend.sample(request_for(face_bytes(seed=1)), 5, 1.0)
    b = backend.sample(request_for(face_bytes(seed=2)), 5, 1.0)
    assert [s.raw for s in a] != [s.raw for s in b]


def test_it_samples_only_the_vocabularys_expressions(face_bytes: FaceBytes) -> None:
    vocabulary = Vocabulary(expressions=("happiness", "sadness"), aus=(6, 12, 15))
    samples = OfflineBackend(TinyModel()).sample(request_for(face_bytes(), vocabulary), 20, 2.0)
    assert {s.answer.expression for s in samples if s.answer} <= {"happiness", "sadness"}
    assert all(s.answer is not None and set(s.answer.aus) == {6, 12, 15} for s in samples)


def test_it_sharpens_samples_at_a_low_temperature(face_bytes: FaceBytes) -> None:
    backend = OfflineBackend(TinyModel())
    cold = backend.sample(request_for(face_bytes(seed=5)), 30, 0.05)
    hot = backend.sample(request_for(face_bytes(seed=5)), 30, 2.0)
    assert len({s.answer.expression for s in cold if s.answer}) <= len(
        {s.answer.expression for s in hot if s.answer}
    )


def _deterministic(backend_model: TinyModel, image: bytes) -> tuple[str, float, float]:
    prediction = backend_model.predict([Image.open(io.BytesIO(image))])
    return (
        EXPRESSIONS[int(prediction.probs[0].argmax())],
        float(prediction.va[0, 0]),
        float(prediction.va[0, 1]),
    )


def _aggregate(expression: str, valence: float, arousal: float) -> Answer:
    aus = {au: au == 12 for au in Vocabulary().aus}
    return Answer(expression, valence, arousal, aus)


def test_it_confirms_an_aggregate_that_matches_the_plain_prediction(face_bytes: FaceBytes) -> None:
    model = TinyModel()
    image = face_bytes(seed=4)
    expression, valence, arousal = _deterministic(model, image)
    aggregate = _aggregate(expression, valence + 0.05, arousal - 0.05)
    reply = OfflineBackend(model).verify(VerificationRequest(request_for(image), aggregate, ""))
    assert reply.kind == "verification"
    assert reply.verdict == {"expression": "confirm", "va": "confirm", "aus": "confirm"}
    assert reply.answer is not None and reply.answer.aus == aggregate.aus
    # The reply carries the plain prediction's softmax, for a graded verification.
    probs = model.predict([Image.open(io.BytesIO(image))]).probs[0]
    assert reply.expression_probs is not None
    assert set(reply.expression_probs) == set(EXPRESSIONS)
    assert reply.expression_probs[expression] == pytest.approx(float(probs.max()), abs=1e-4)
    assert json.loads(reply.raw)["probs"] == reply.expression_probs


def test_it_revises_a_disagreeing_aggregate(face_bytes: FaceBytes) -> None:
    model = TinyModel()
    image = face_bytes(seed=4)
    expression, valence, arousal = _deterministic(model, image)
    other = next(e for e in EXPRESSIONS if e != expression)
    aggregate = _aggregate(other, valence + 0.5, arousal)
    reply = OfflineBackend(model).verify(VerificationRequest(request_for(image), aggregate, ""))
    assert reply.verdict == {"expression": "revise", "va": "revise", "aus": "revise"}
    assert reply.answer is not None
    assert reply.answer.expression == expression
    assert reply.answer.valence == pytest.approx(valence, abs=1e-3)
    assert json.loads(reply.raw)["verdict"] == reply.verdict


def test_it_returns_invalid_samples_for_unreadable_bytes() -> None:
    backend = OfflineBackend(TinyModel())
    samples = backend.sample(request_for(b"not an image"), 3, 1.0)
    assert len(samples) == 3
    assert all(not s.valid and "could not read the image" in (s.error or "") for s in samples)
    aggregate = _aggregate("neutral", 0.0, 0.0)
    reply = backend.verify(VerificationRequest(request_for(b"not an image"), aggregate, ""))
    assert not reply.valid


def test_it_runs_sv_uamc_end_to_end(face_bytes: FaceBytes) -> None:
    backend = OfflineBackend(TinyModel())
    result = run_uamc(backend, request_for(face_bytes(seed=9)), UAMCParams())
    assert result.answer is not None
    assert 4 <= result.n_samples <= 11
    assert result.samples[-1].kind == "verification"
    assert result.usage.requests == 0
    repeat = run_uamc(OfflineBackend(TinyModel()), request_for(face_bytes(seed=9)), UAMCParams())
    assert repeat.to_json() == result.to_json()


@pytest.mark.skipif(
    not OfflineModel.WEIGHTS_PATH.is_file(), reason="the offline weights have not been trained"
)
def test_it_runs_on_the_trained_weights(face_bytes: FaceBytes) -> None:
    backend = OfflineBackend()
    samples = backend.sample(request_for(face_bytes(size=(96, 96))), 4, 1.0)
    assert len(samples) == 4 and all(s.valid for s in samples)


def test_it_applies_a_prompt_versions_recalibration(face_bytes: FaceBytes) -> None:
    image = face_bytes()
    plain = OfflineBackend(TinyModel()).sample(request_for(image), 40, 1.0)
    # A strong prior towards contempt, as corrections would fit if experts kept
    # answering contempt where the network said something else.
    shifted = OfflineBackend(
        TinyModel(), calibration={"class_log_prior": {"contempt": 8.0}, "temperature": 1.0}
    ).sample(request_for(image), 40, 1.0)
    count = sum(s.answer is not None and s.answer.expression == "contempt" for s in shifted)
    before = sum(s.answer is not None and s.answer.expression == "contempt" for s in plain)
    assert count > before and count >= 30
    verify_expression = OfflineBackend(
        TinyModel(), calibration={"class_log_prior": {"contempt": 30.0}}
    ).verify(VerificationRequest(request_for(image), _aggregate("neutral", 0.0, 0.0), ""))
    assert verify_expression.answer is not None
    assert verify_expression.answer.expression == "contempt"
