"""Datasets and their faces, with the human labels a source dataset already has."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from seke_app.engine.vocab import AU_VOCABULARIES, EXPRESSIONS, Vocabulary

EXPRESSION_CHOICES = [(e, e) for e in EXPRESSIONS]
AU_VOCABULARY_CHOICES = [(name, name) for name in AU_VOCABULARIES]


class Dataset(models.Model):
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    licence_note = models.TextField(blank=True)
    au_vocabulary = models.CharField(max_length=20, choices=AU_VOCABULARY_CHOICES, default="feid17")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def vocabulary(self) -> Vocabulary:
        return Vocabulary.named(self.au_vocabulary)


class FaceImage(models.Model):
    """One face in one dataset; the file itself is stored once per content hash."""

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="images")
    sha256 = models.CharField(max_length=64)
    file = models.FileField(max_length=200)
    image_format = models.CharField(max_length=10)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    original_name = models.CharField(max_length=500)
    subject = models.CharField(max_length=100, blank=True)
    split = models.CharField(max_length=50, blank=True)
    licence_note = models.TextField(blank=True)
    # Human labels the source dataset already has; each grain may be missing.
    known_expression = models.CharField(
        max_length=20, choices=EXPRESSION_CHOICES, null=True, blank=True
    )
    known_valence = models.FloatField(null=True, blank=True)
    known_arousal = models.FloatField(null=True, blank=True)
    # {"12": true, "4": false, ...}: only the AUs the source coded.
    known_aus = models.JSONField(null=True, blank=True)
    rejected = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "sha256"], name="image_unique_per_dataset"),
            models.CheckConstraint(
                condition=Q(known_valence__isnull=True)
                | Q(known_valence__gte=-1, known_valence__lte=1),
                name="image_known_valence_range",
            ),
            models.CheckConstraint(
                condition=Q(known_arousal__isnull=True)
                | Q(known_arousal__gte=-1, known_arousal__lte=1),
                name="image_known_arousal_range",
            ),
        ]
        indexes = [
            models.Index(fields=["sha256"], name="image_sha256"),
            models.Index(fields=["dataset", "split"], name="image_dataset_split"),
        ]

    def __str__(self) -> str:
        return f"{self.dataset.name}/{self.original_name}"

    def known_aus_dict(self) -> dict[int, bool] | None:
        if self.known_aus is None:
            return None
        return {int(au): bool(on) for au, on in self.known_aus.items()}

    def has_known_labels(self) -> bool:
        return (
            self.known_expression is not None
            or self.known_valence is not None
            or self.known_aus is not None
        )
