"""The offline annotator as an SV-UAMC backend: a small CNN baseline, not a VLLM.

It first frames the face (``offline/face.py``): in a photo where the face is small,
the face OpenCV finds is cut out with the margin of the training faces; a face
crop is read whole. The evidence of every sample says which, and the framed face
of the last ``FACE_CACHE`` images is kept, since every round and the
verification read the same image.

It draws samples the way SV-UAMC expects from a vision LLM, so that the same code
path runs on it:

* each sample is one random test-time-augmented view of the image; the
  expression is drawn from that view's softmax at the run's temperature, over
  the run's vocabulary only (probabilities of other classes are dropped and the
  rest renormalised); the sample also carries that softmax
  (``Sample.expression_probs``), so SV-UAMC counts the view's probabilities as its
  vote rather than the single drawn class;
* valence and arousal come from the network's VA head on the same view, plus a
  little Gaussian noise (``VA_NOISE_SD``) standing for the head's own error,
  clipped to [-1, 1];
* the network sees no action units, so each sample names the AUs that the
  knowledge makes more likely than not for its sampled expression (CK+ rates of
  at least 0.5), and the evidence says so. Drawing them at random from those
  rates (as a first version did) made the samples disagree about AUs for no
  reason in the face, which flagged nearly every image on AU confidence alone;
  now AU disagreement only follows expression disagreement.

Randomness is reproducible: every call draws from a numpy generator seeded with
the SHA-256 of the image bytes and the number of earlier calls for the same image
on this backend, so a fresh backend repeats the same samples for the same image.

Verification is the deterministic prediction on the un-augmented image. Its
verdict per grain is "confirm" when it agrees with the aggregate and "revise"
otherwise: the expression agrees when the most probable class (within the
vocabulary) is the aggregate's, and the reply carries the whole softmax
(``Sample.expression_probs``), so that SV-UAMC's verification component can use
the verifier's probability of the final expression; VA agrees when both values
lie within ``VA_AGREEMENT`` of the aggregate's. AUs are never observed, only
derived from the expression, so the AU verdict follows the expression verdict,
and a revision proposes the AUs the knowledge makes more likely than not for
the new expression.

Human labels given with the request do not change the answer: the baseline gives
its own, and SV-UAMC flags any contradiction. Calls cost nothing and are counted
as zero requests.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, Self

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from seke_app.engine.knowledge import AU_RATES
from seke_app.engine.offline.face import Framing, face_square
from seke_app.engine.offline.model import OfflineModel, OfflinePrediction
from seke_app.engine.types import AnnotationRequest, Answer, Sample, VerificationRequest
from seke_app.engine.vocab import EXPRESSIONS, Vocabulary

DEFAULT_MODEL_NAME = "seke-offline-cnn-v1"
# Standard deviation of the noise added to the VA head's output on each view.
VA_NOISE_SD = 0.03
# Largest difference in valence or arousal that still confirms the aggregate.
VA_AGREEMENT = 0.2
BASELINE = "offline CNN baseline (not a vision LLM)"
# How many images' framed faces a backend keeps (see ``OfflineBackend._face``).
FACE_CACHE = 32


class ExpressionModel(Protocol):
    """What the backend needs of the offline CNN (``OfflineModel`` or a test double)."""

    metadata: dict[str, Any]

    def predict(
        self, images: Sequence[Image.Image], *, temperature: float = 1.0
    ) -> OfflinePrediction: ...

    def predict_augmented(
        self, image: Image.Image, k: int, rng: np.random.Generator, *, temperature: float = 1.0
    ) -> OfflinePrediction: ...


def _vocabulary_probs(probs: npt.NDArray[Any], vocabulary: Vocabulary) -> npt.NDArray[np.float64]:
    """Rows of probabilities over the vocabulary's expressions, renormalised."""
    columns = [EXPRESSIONS.index(e) for e in vocabulary.expressions]
    kept = np.asarray(probs, dtype=np.float64)[:, columns]
    totals = kept.sum(axis=1, keepdims=True)
    uniform = np.full_like(kept, 1.0 / len(columns))
    return np.where(totals > 0, kept / np.where(totals > 0, totals, 1.0), uniform)


def _likely_aus(expression: str, vocabulary: Vocabulary) -> dict[int, bool]:
    rates = AU_RATES.get(expression, {})
    return {au: rates.get(au, 0.0) >= 0.5 for au in vocabulary.aus}


def _open(image_bytes: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(image_bytes))
    image.load()
    return image


class OfflineBackend:
    """SV-UAMC backend on the offline expression CNN (see the module docstring)."""

    name = "offline"

    def __init__(
        self,
        model: ExpressionModel | None = None,
        calibration: Mapping[str, Any] | None = None,
    ) -> None:
        self._model: ExpressionModel = model if model is not None else OfflineModel.load()
        self.model = str(self._model.metadata.get("name", DEFAULT_MODEL_NAME))
        # A prompt version's recalibration, learned from reviewers' corrections: the
        # offline annotator reads no prompt, so this is how feedback reaches it.
        self._calibration = dict(calibration or {})
        self._calls: dict[bytes, int] = {}
        # The framed faces of the last few images: SV-UAMC asks for several rounds
        # and a verification of the same image, and finding the face is the
        # costliest step of preparing it.
        self._faces: OrderedDict[bytes, tuple[Image.Image, Framing]] = OrderedDict()
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: the backend holds no connection, and the model it was
        given is the caller's (runs share one per process)."""

    def _rng(self, digest: bytes) -> np.random.Generator:
        with self._lock:
            counter = self._calls.get(digest, 0)
            self._calls[digest] = counter + 1
        return np.random.default_rng([int.from_bytes(digest[:16], "big"), counter])

    def _face(self, image_bytes: bytes, digest: bytes) -> tuple[Image.Image, Framing]:
        """The image's face square and how it was framed (``face.face_square``)."""
        with self._lock:
            if digest in self._faces:
                self._faces.move_to_end(digest)
                return self._faces[digest]
        framed = face_square(_open(image_bytes))
        with self._lock:
            self._faces[digest] = framed
            while len(self._faces) > FACE_CACHE:
                self._faces.popitem(last=False)
        return framed

    def _calibrated(
        self, probs: npt.NDArray[np.float64], vocabulary: Vocabulary
    ) -> npt.NDArray[np.float64]:
        """Apply class log-prior offsets and a temperature: p' ~ p^(1/T) * exp(offset)."""
        if not self._calibration:
            return probs
        offsets = self._calibration.get("class_log_prior", {})
        temperature = float(self._calibration.get("temperature", 1.0))
        shift = np.array([float(offsets.get(e, 0.0)) for e in vocabulary.expressions])
        logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature + shift
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        calibrated: npt.NDArray[np.float64] = weights / weights.sum(axis=1, keepdims=True)
        return calibrated

    def sample(self, request: AnnotationRequest, k: int, temperature: float) -> list[Sample]:
        """``k`` answers, one per random test-time view of the image."""
        digest = hashlib.sha256(request.image_bytes).digest()
        rng = self._rng(digest)
        try:
            face, framing = self._face(request.image_bytes, digest)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            error = f"the offline annotator could not read the image ({exc})"
            return [Sample(kind="sample", raw="", error=error) for _ in range(k)]
        prediction = self._model.predict_augmented(face, k, rng, temperature=temperature)
        probs = self._calibrated(
            _vocabulary_probs(prediction.probs, request.vocabulary), request.vocabulary
        )
        return [
            self._view_sample(probs[i], prediction.va[i], rng, request.vocabulary, i, framing)
            for i in range(k)
        ]

    def _view_sample(
        self,
        probs: npt.NDArray[np.float64],
        va: npt.NDArray[Any],
        rng: np.random.Generator,
        vocabulary: Vocabulary,
        view: int,
        framing: Framing,
    ) -> Sample:
        index = int(rng.choice(len(probs), p=probs))
        expression = vocabulary.expressions[index]
        noisy = np.clip(np.asarray(va, dtype=np.float64) + rng.normal(0, VA_NOISE_SD, 2), -1, 1)
        aus = _likely_aus(expression, vocabulary)
        answer = Answer(
            expression=expression,
            valence=round(float(noisy[0]), 4),
            arousal=round(float(noisy[1]), 4),
            aus=aus,
            evidence={
                "expression": f"{BASELINE}: drawn from the softmax of test-time view "
                f"{view + 1} (p={probs[index]:.2f}); {framing.note}",
                "va": f"{BASELINE}: the network's VA head on the same view",
                "aus": f"{BASELINE}: not observed; the AUs the CK+ rates make likely for "
                f"{expression}",
            },
        )
        named = _named(probs, vocabulary)
        raw = {
            "answer": answer.to_json(),
            "view": view + 1,
            "probs": named,
            "framing": framing.note,
        }
        return Sample(kind="sample", raw=json.dumps(raw), answer=answer, expression_probs=named)

    def verify(self, verification: VerificationRequest) -> Sample:
        """The un-augmented prediction, confirming or revising each grain of the aggregate."""
        request, aggregate = verification.request, verification.aggregate
        try:
            face, framing = self._face(
                request.image_bytes, hashlib.sha256(request.image_bytes).digest()
            )
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            error = f"the offline annotator could not read the image ({exc})"
            return Sample(kind="verification", raw="", error=error)
        prediction = self._model.predict([face])
        probs = self._calibrated(
            _vocabulary_probs(prediction.probs, request.vocabulary), request.vocabulary
        )[0]
        expression = request.vocabulary.expressions[int(np.argmax(probs))]
        valence, arousal = (round(float(x), 4) for x in prediction.va[0])
        va_agrees = max(abs(valence - aggregate.valence), abs(arousal - aggregate.arousal))
        same = expression == aggregate.expression
        verdict = {
            "expression": "confirm" if same else "revise",
            "va": "confirm" if va_agrees <= VA_AGREEMENT else "revise",
            "aus": "confirm" if same else "revise",
        }
        answer = Answer(
            expression=expression,
            valence=valence,
            arousal=arousal,
            aus=aggregate.aus if same else _likely_aus(expression, request.vocabulary),
            au_intensity=dict(aggregate.au_intensity) if same else {},
            evidence={
                "expression": f"{BASELINE}: most probable class of the un-augmented image "
                f"(p={probs.max():.2f}); {framing.note}",
                "va": f"{BASELINE}: the VA head on the un-augmented image",
                "aus": f"{BASELINE}: follows the expression; AUs are not observed",
            },
        )
        named = _named(probs, request.vocabulary)
        raw = {
            "answer": answer.to_json(),
            "verdict": verdict,
            "probs": named,
            "framing": framing.note,
        }
        return Sample(
            kind="verification",
            raw=json.dumps(raw),
            answer=answer,
            verdict=verdict,
            expression_probs=named,
        )


def _named(probs: npt.NDArray[np.float64], vocabulary: Vocabulary) -> dict[str, float]:
    return {e: round(float(p), 4) for e, p in zip(vocabulary.expressions, probs, strict=True)}
