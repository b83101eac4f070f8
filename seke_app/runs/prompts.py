"""Prompt versions: the knowledge given to the model, one version active at a time."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from seke_app.engine.knowledge import knowledge_text
from seke_app.engine.prompts import prompt_fingerprint
from seke_app.models import PromptVersion


def prompt_version_active() -> PromptVersion:
    """The active version; the built-in knowledge becomes version 1 on first use."""
    active = PromptVersion.objects.filter(is_active=True).first()
    if active is not None:
        return active
    text = knowledge_text()
    try:
        with transaction.atomic():
            return PromptVersion.objects.create(
                number=1,
                name="Built-in emotion knowledge",
                knowledge_text=text,
                fingerprint=prompt_fingerprint(text),
                is_active=True,
                activated_at=timezone.now(),
            )
    except IntegrityError:
        # Another process created it at the same moment: use theirs.
        return PromptVersion.objects.get(is_active=True)
