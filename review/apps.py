from django.apps import AppConfig


class ReviewConfig(AppConfig):
    name = "review"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from review.tasks.events import run_stopped
        from review.tasks.services import (
            audit_tasks_open_more,
            task_create_for,
            tasks_follow_calibration,
            tasks_follow_threshold,
        )
        from review.tasks.store import ReviewDecisionStore
        from seke_app.insights.references import register_store
        from seke_app.runs.hooks import (
            on_annotation_written,
            on_audits_requested,
            on_calibration_fitted,
            on_run_finished,
            on_threshold_changed,
        )

        # Every unconfident or audited annotation gets its review task in the same
        # transaction; a threshold change opens and closes tasks in its own.
        on_annotation_written(task_create_for)
        on_threshold_changed(tasks_follow_threshold)
        # An audit too small to certify anything can be extended from the dashboard.
        on_audits_requested(audit_tasks_open_more)
        # The queue ranks by calibrated confidence: a new map re-ranks waiting tasks.
        on_calibration_fitted(tasks_follow_calibration)
        # A run that stops with its review queue done tells SEKE's webhooks so.
        on_run_finished(run_stopped)
        register_store(ReviewDecisionStore())
