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
  knowledge makes at least as likely as not for its sampled expression (CK+
  rates of at least 0.5), and the evidence says so. Drawing them at random from
  those rates (as a first version did) made the samples disagree about AUs for
  no reason in the face, which flagged nearly every image on AU confidence
  alone; now AU disagreement only follows expression disagreement.

Known labels are inputs (``engine/fusion.py`` defines the maths). The grains
that the request's ``KnownLabels`` give are fused with the image:

* the expression is drawn from the fused posterior ``P(e | view, known VA,
  known AUs)`` instead of the view's softmax, and the sample carries that
  posterior as its ``expression_probs``, so SV-UAMC's soft votes and its
  confidence follow it; the view's own softmax is kept in the raw reply
  (``image_probs``);
* a known expression is every sample's expression (its posterior is certain),
  VA is then the VA head's reading combined with that expression's VA
  distribution on the AffectNet training faces, and the AUs are those its CK+
  rates make likely;
* known VA and known AUs are carried unchanged; AUs the labels do not code
  follow the expression.

With nothing known, the samples are exactly those of the network alone.

Randomness is reproducible: every call draws from a numpy generator seeded with
the SHA-256 of the image bytes and the number of earlier calls for the same image
on this backend, so a fresh backend repeats the same samples for the same image.

Verification is the deterministic prediction on the un-augmented image. Its
verdict per grain is "confirm" when it agrees with the aggregate and "revise"
otherwise: the expression agrees when the most probable class (within the
vocabulary) is the aggregate's, and the reply carries the whole softmax
(``Sample.expression_probs``; the fused posterior when labels are known), so
that SV-UAMC's verification component can use the verifier's probability of the
final expression; VA agrees when both values lie within ``VA_AGREEMENT`` of the
aggregate's. AUs are never observed, only derived from the expression, so the AU
verdict follows the expression verdict, and a revision proposes the AUs the
knowledge makes likely for the new expression. The verification fuses the known
labels in the same way.

Calls cost nothing and are counted as zero requests.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from seke_app.engine.fusion import KnownEvidence, aus_for, expression_posterior, va_estimate
from seke_app.engine.likelihoods import Likelihoods, default_likelihoods
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


def _open(image_bytes: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(image_bytes))
    image.load()
    return image


class OfflineBackend:
    """SV-UAMC backend on the offline expression CNN (see the module docstring)."""

    name = "offline"
    observed_grains = frozenset({"expression", "va"})

    def __init__(
        self,
        model: ExpressionModel | None = None,
        calibration: Mapping[str, Any] | None = None,
        likelihoods: Likelihoods | None = None,
    ) -> None:
        self._model: ExpressionModel = model if model is not None else OfflineModel.load()
        # What known labels are fused with (``engine/likelihoods.py``).
        self._likelihoods = likelihoods if likelihoods is not None else default_likelihoods()
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

    def _read(
        self, request: AnnotationRequest, digest: bytes
    ) -> tuple[str, tuple[KnownEvidence, Image.Image, Framing] | None]:
        """The request's usable known labels and framed face, or why there are none."""
        try:
            evidence = KnownEvidence.of(request.known, request.vocabulary)
        except ValueError as exc:
            return f"the offline annotator cannot use the known labels ({exc})", None
        try:
            face, framing = self._face(request.image_bytes, digest)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            return f"the offline annotator could not read the image ({exc})", None
        return "", (evidence, face, framing)

    def sample(self, request: AnnotationRequest, k: int, temperature: float) -> list[Sample]:
        """``k`` answers, one per random test-time view of the image."""
        digest = hashlib.sha256(request.image_bytes).digest()
        rng = self._rng(digest)
        problem, read = self._read(request, digest)
        if read is None:
            return [Sample(kind="sample", raw="", error=problem) for _ in range(k)]
        evidence, face, framing = read
        prediction = self._model.predict_augmented(face, k, rng, temperature=temperature)
        probs = self._calibrated(
            _vocabulary_probs(prediction.probs, request.vocabulary), request.vocabulary
        )
        posterior = expression_posterior(probs, evidence, request.vocabulary, self._likelihoods)
        view = _View(request.vocabulary, evidence, framing, self._likelihoods.head.residual_sd)
        return [
            self._view_sample(view, i, probs[i], posterior[i], prediction.va[i], rng)
            for i in range(k)
        ]

    def _view_sample(
        self,
        view: _View,
        index: int,
        probs: npt.NDArray[np.float64],
        posterior: npt.NDArray[np.float64],
        head: npt.NDArray[Any],
        rng: np.random.Generator,
    ) -> Sample:
        chosen = int(rng.choice(len(posterior), p=posterior))
        expression = view.vocabulary.expressions[chosen]
        noisy = np.asarray(head, dtype=np.float64) + rng.normal(0, VA_NOISE_SD, 2)
        valence, arousal = va_estimate(noisy, view.evidence, self._likelihoods)
        source = f"the softmax of test-time view {index + 1}"
        answer = Answer(
            expression=expression,
            valence=round(valence, 4),
            arousal=round(arousal, 4),
            aus=aus_for(expression, view.evidence, view.vocabulary),
            evidence={
                "expression": view.expression_evidence(
                    f"drawn from {source}", float(posterior[chosen])
                ),
                "va": view.va_evidence("the network's VA head on the same view"),
                "aus": view.aus_evidence(expression),
            },
        )
        named = _named(posterior, view.vocabulary)
        raw = {
            "answer": answer.to_json(),
            "view": index + 1,
            "probs": named,
            "framing": view.framing.note,
        }
        if view.fused:
            raw["image_probs"] = _named(probs, view.vocabulary)
        return Sample(
            kind="sample",
            raw=json.dumps(raw),
            answer=answer,
            expression_probs=named,
            probs_source="views",
            va_sd=self._completion_sd(view.evidence),
        )

    def _completion_sd(self, evidence: KnownEvidence) -> tuple[float, float] | None:
        """The error of VA completed from a known expression (``Sample.va_sd``).

        Every sample then starts from the same class distribution and only the
        head's small view-to-view wobble separates them, so their spread alone would
        claim near certainty; the completion's own error on the held-out training
        faces (``HeadModel.residual_sd``) is what a reviewer would find. Known VA
        has no error, and an image-only reading keeps its views' spread as before.
        """
        if evidence.expression is None or evidence.has_va:
            return None
        return self._likelihoods.head.residual_sd

    def verify(self, verification: VerificationRequest) -> Sample:
        """The un-augmented prediction, confirming or revising each grain of the aggregate."""
        request, aggregate = verification.request, verification.aggregate
        problem, read = self._read(request, hashlib.sha256(request.image_bytes).digest())
        if read is None:
            return Sample(kind="verification", raw="", error=problem)
        evidence, face, framing = read
        prediction = self._model.predict([face])
        probs = self._calibrated(
            _vocabulary_probs(prediction.probs, request.vocabulary), request.vocabulary
        )
        posterior = expression_posterior(probs, evidence, request.vocabulary, self._likelihoods)[0]
        view = _View(request.vocabulary, evidence, framing, self._likelihoods.head.residual_sd)
        expression = request.vocabulary.expressions[int(np.argmax(posterior))]
        valence, arousal = (
            round(x, 4) for x in va_estimate(prediction.va[0], evidence, self._likelihoods)
        )
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
            aus=aggregate.aus if same else aus_for(expression, evidence, request.vocabulary),
            au_intensity=dict(aggregate.au_intensity) if same else {},
            evidence={
                "expression": view.expression_evidence(
                    "most probable class of the un-augmented image", float(posterior.max())
                ),
                "va": view.va_evidence("the VA head on the un-augmented image"),
                "aus": view.aus_evidence(expression),
            },
        )
        named = _named(posterior, request.vocabulary)
        raw = {
            "answer": answer.to_json(),
            "verdict": verdict,
            "probs": named,
            "framing": framing.note,
        }
        if view.fused:
            raw["image_probs"] = _named(probs[0], request.vocabulary)
        return Sample(
            kind="verification",
            raw=json.dumps(raw),
            answer=answer,
            verdict=verdict,
            expression_probs=named,
            probs_source="views",
        )


@dataclass(frozen=True)
class _View:
    """What every sample of one request shares, and its evidence in words."""

    vocabulary: Vocabulary
    evidence: KnownEvidence
    framing: Framing
    # The error of VA completed from a known expression (``_completion_sd``).
    residual_sd: tuple[float, float]

    @property
    def fused(self) -> bool:
        """Whether the expression posterior combines the image with known labels."""
        return self.evidence.expression is None and bool(self.evidence.fused())

    def expression_evidence(self, how: str, p: float) -> str:
        if self.evidence.expression is not None:
            return f"{BASELINE}: the known label"
        if self.fused:
            known = " and ".join(self.evidence.fused())
            how = f"{how}, fused with the known {known}"
        return f"{BASELINE}: {how} (p={p:.2f}); {self.framing.note}"

    def va_evidence(self, head: str) -> str:
        known = self.evidence
        if known.valence is not None and known.arousal is not None:
            return f"{BASELINE}: the known valence and arousal"
        text = f"{BASELINE}: {head}"
        if known.expression is not None:
            sd = self.residual_sd
            text += (
                f", combined with {known.expression}'s valence/arousal on AffectNet faces"
                f" (typical error on faces it never saw: valence ±{sd[0]:.2f},"
                f" arousal ±{sd[1]:.2f})"
            )
        if known.valence is not None:
            text += "; valence as known"
        if known.arousal is not None:
            text += "; arousal as known"
        return text

    def aus_evidence(self, expression: str) -> str:
        coded = self.evidence.aus
        if coded and set(coded) >= set(self.vocabulary.aus):
            return f"{BASELINE}: the known AUs"
        text = f"{BASELINE}: not observed; the AUs the CK+ rates make likely for {expression}"
        if coded:
            text = f"{BASELINE}: {len(coded)} AUs known; the others not observed, those the "
            text += f"CK+ rates make likely for {expression}"
        return text


def _named(probs: npt.NDArray[np.float64], vocabulary: Vocabulary) -> dict[str, float]:
    return {e: round(float(p), 4) for e, p in zip(vocabulary.expressions, probs, strict=True)}
