"""Runs get a number per dataset (existing runs numbered by creation order) and an
optional name; exports count their skipped images by reason; "AU vocabulary" is
spelled so in forms and the admin."""

from typing import Any

from django.db import migrations, models


def number_existing_runs(apps: Any, schema_editor: Any) -> None:
    GenerationRun = apps.get_model("seke_app", "GenerationRun")
    counts: dict[int, int] = {}
    for run in GenerationRun.objects.order_by("dataset_id", "created_at", "id").only(
        "id", "dataset_id"
    ):
        counts[run.dataset_id] = counts.get(run.dataset_id, 0) + 1
        GenerationRun.objects.filter(id=run.id).update(number=counts[run.dataset_id])


class Migration(migrations.Migration):
    dependencies = [
        ("seke_app", "0012_certificate_earlier_decisions"),
    ]

    operations = [
        migrations.AddField(
            model_name="generationrun",
            name="name",
            field=models.CharField(blank=True, max_length=100),
        ),
        migrations.AddField(
            model_name="generationrun",
            name="number",
            field=models.PositiveIntegerField(null=True),
        ),
        migrations.RunPython(number_existing_runs, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="generationrun",
            name="number",
            field=models.PositiveIntegerField(),
        ),
        migrations.AddConstraint(
            model_name="generationrun",
            constraint=models.UniqueConstraint(
                fields=("dataset", "number"), name="run_number_per_dataset"
            ),
        ),
        migrations.AddField(
            model_name="export",
            name="skipped_by_reason",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AlterField(
            model_name="dataset",
            name="au_vocabulary",
            field=models.CharField(
                choices=[("feid17", "feid17"), ("ckplus", "ckplus"), ("disfa12", "disfa12")],
                default="feid17",
                max_length=20,
                verbose_name="AU vocabulary",
            ),
        ),
    ]
