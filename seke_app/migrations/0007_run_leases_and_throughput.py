from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('seke_app', '0006_dataset_imports'),
    ]

    operations = [
        migrations.AddField(
            model_name='generationrun',
            name='resumed_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='runitem',
            name='finished_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name='runitem',
            index=models.Index(fields=['run', 'finished_at'], name='run_item_finished'),
        ),
    ]
