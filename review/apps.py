from django.apps import AppConfig


class ReviewConfig(AppConfig):
    name = "review"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from review.tasks.services import task_create_for
        from review.tasks.store import ReviewDecisionStore
        from seke_app.insights.references import register_store
        from seke_app.runs.hooks import on_annotation_written

        # Every flagged annotation gets its review task in the same transaction.
        on_annotation_written(task_create_for)
        register_store(ReviewDecisionStore())
