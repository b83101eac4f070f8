"""Create the two roles, annotators and admins, as groups with their permissions."""

from django.db import migrations

ROLE_PERMISSIONS = {
    "annotators": [
        ("review", "reviewtask", "view"),
        ("review", "reviewdecision", "add"),
        ("review", "reviewdecision", "view"),
        ("seke_app", "faceimage", "view"),
        ("seke_app", "annotation", "view"),
    ],
    "admins": None,  # every permission of both apps
}


def create_roles(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    # Permissions are normally created after all migrations ran; make them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, wanted in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        if wanted is None:
            perms = Permission.objects.filter(content_type__app_label__in=["seke_app", "review"])
        else:
            perms = [
                Permission.objects.get(
                    content_type__app_label=app,
                    content_type__model=model,
                    codename=f"{action}_{model}",
                )
                for app, model, action in wanted
            ]
        group.permissions.set(perms)


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=list(ROLE_PERMISSIONS)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("seke_app", "0001_datasets_images_prompts_runs_annotations"),
        ("review", "0001_review_tasks_and_decisions"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
