"""Honest references: the grains each annotation was given as known labels, and what
each prompt version learned from.

``Annotation.known_grains`` is filled for existing annotations with what their run
sent: the VLLM's prompt states the image's known expression, valence/arousal and
the AUs of the dataset's vocabulary (``engine.prompts.anchors_text``); the offline
annotator reads no prompt, so its annotations were given none. The image's known
labels are read as they are now; labels imported after the run make the record
err on the side of not scoring.

``PromptVersion.learned_from_decisions`` is None ("not recorded") for versions
made from reviews before this migration (those with a parent): which runs they
learned from was never kept. A version without a parent learned from nothing.
"""

from typing import Any

from django.db import migrations, models

from seke_app.engine.vocab import AU_VOCABULARIES

BATCH = 2000


def _given(image: Any, au_vocabulary: str) -> list[str]:
    grains = []
    if image.known_expression is not None:
        grains.append("expression")
    if image.known_valence is not None or image.known_arousal is not None:
        grains.append("va")
    vocabulary = set(AU_VOCABULARIES.get(au_vocabulary, ()))
    if any(int(au) in vocabulary for au in (image.known_aus or {})):
        grains.append("aus")
    return grains


def fill_known_grains(apps: Any, schema_editor: Any) -> None:
    Annotation = apps.get_model("seke_app", "Annotation")
    given = Annotation.objects.filter(run__backend="openai").select_related("image", "run__dataset")
    batch = []
    for annotation in given.iterator(chunk_size=BATCH):
        annotation.known_grains = _given(annotation.image, annotation.run.dataset.au_vocabulary)
        if annotation.known_grains:
            batch.append(annotation)
        if len(batch) >= BATCH:
            Annotation.objects.bulk_update(batch, ["known_grains"])
            batch = []
    if batch:
        Annotation.objects.bulk_update(batch, ["known_grains"])


def mark_unrecorded(apps: Any, schema_editor: Any) -> None:
    PromptVersion = apps.get_model("seke_app", "PromptVersion")
    PromptVersion.objects.filter(parent__isnull=False).update(learned_from_decisions=None)


class Migration(migrations.Migration):
    dependencies = [
        ("seke_app", "0007_run_leases_and_throughput"),
    ]

    operations = [
        migrations.AddField(
            model_name="annotation",
            name="known_grains",
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AddField(
            model_name="promptversion",
            name="learned_from_decisions",
            field=models.JSONField(blank=True, default=list, null=True),
        ),
        migrations.AddField(
            model_name="promptversion",
            name="learned_from_images",
            field=models.ManyToManyField(
                blank=True, related_name="prompt_versions_taught", to="seke_app.faceimage"
            ),
        ),
        migrations.RunPython(fill_known_grains, migrations.RunPython.noop, elidable=True),
        migrations.RunPython(mark_unrecorded, migrations.RunPython.noop, elidable=True),
    ]
