"""SEKE's data, one module per stage: datasets and faces, runs and annotations, exports,
webhooks, and what the configured endpoint was found to support.

``jobs.TrackedJob`` holds the fields every background job shows its progress with.
Human decisions live in the ``review`` app as new rows pointing at annotations;
``seke_app`` reads them only through ``seke_app.insights.references``.
"""

from seke_app.models.api import ApiToken
from seke_app.models.datasets import (
    AU_VOCABULARY_CHOICES,
    EXPRESSION_CHOICES,
    Dataset,
    FaceImage,
)
from seke_app.models.exports import Export, exports_dir
from seke_app.models.jobs import TrackedJob
from seke_app.models.probes import EndpointProbe
from seke_app.models.runs import (
    Annotation,
    AnnotationSample,
    CalibrationFit,
    GenerationRun,
    PromptVersion,
    RunBatch,
    RunCertificate,
    RunItem,
)
from seke_app.models.webhooks import (
    EventName,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
)

__all__ = [
    "AU_VOCABULARY_CHOICES",
    "EXPRESSION_CHOICES",
    "Annotation",
    "AnnotationSample",
    "ApiToken",
    "CalibrationFit",
    "Dataset",
    "EndpointProbe",
    "EventName",
    "Export",
    "FaceImage",
    "GenerationRun",
    "PromptVersion",
    "RunBatch",
    "RunCertificate",
    "RunItem",
    "TrackedJob",
    "Webhook",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEvent",
    "exports_dir",
]
