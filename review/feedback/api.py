"""Prompt versions through the API, read only (admins, as the prompt version pages).

A version is the knowledge given to the model. Its status says where it stands:
``active`` (the one new runs use), ``retired`` (active once, since replaced) or
``candidate`` (never active yet: learned from reviews, waiting for its gold-set
check and promotion).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from django.db.models import QuerySet
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema
from ninja.pagination import CursorPagination, paginate

from review.models import GoldCheck
from seke_app.api.core import ADMINS_ONLY, choices_schema
from seke_app.models import PromptVersion
from seke_app.runs.prompts import prompt_version_active

router = Router(tags=["prompt versions"], auth=ADMINS_ONLY)

VersionStatus = Literal["active", "retired", "candidate"]


GoldCheckStatus = Annotated[
    GoldCheck.Status, choices_schema(GoldCheck.Status, "Gold-set check status")
]


def version_status(version: PromptVersion) -> VersionStatus:
    if version.is_active:
        return "active"
    return "retired" if version.activated_at is not None else "candidate"


class PromptVersionOut(Schema):
    code: UUID
    number: int
    name: str
    status: VersionStatus = Field(
        description="active: what new runs use; retired: active once, since replaced;"
        " candidate: never active yet."
    )
    parent: UUID | None = Field(description="The code of the version it was learned from.")
    parent_number: int | None
    fingerprint: str
    n_exemplars: int
    created_by: str | None
    created_at: datetime
    activated_at: datetime | None

    @staticmethod
    def resolve_status(version: PromptVersion) -> VersionStatus:
        return version_status(version)

    @staticmethod
    def resolve_parent(version: PromptVersion) -> UUID | None:
        return version.parent.code if version.parent else None

    @staticmethod
    def resolve_parent_number(version: PromptVersion) -> int | None:
        return version.parent.number if version.parent else None

    @staticmethod
    def resolve_n_exemplars(version: PromptVersion) -> int:
        return len(version.exemplars)

    @staticmethod
    def resolve_created_by(version: PromptVersion) -> str | None:
        return version.created_by.get_username() if version.created_by else None


class LearnedFromOut(Schema):
    """What the version was fitted on: its rule notes, exemplars and recalibration."""

    recorded: bool = Field(
        description="False for a version made before SEKE recorded what it learned from:"
        " its figures on any image may then be in-sample."
    )
    n_decisions: int | None = Field(description="Review decisions it learned from.")
    decisions: list[int] | None = Field(description="Those decisions' ids.")
    n_images: int = Field(description="Images those decisions (and its exemplars) touched.")
    unrecorded_lineage: list[int] = Field(
        description="Numbers of the versions in its lineage (itself and its ancestors) that"
        " learned from reviews without a record of them."
    )


class GoldCheckOut(Schema):
    """A gold-set check of the version against its parent, as the version's page lists it."""

    status: GoldCheckStatus
    parent: UUID | None
    backend: str
    model_name: str
    include_imported: bool
    n_images: int
    report: dict[str, Any] = Field(
        description="Each side's scores ('version', 'parent') and the measures on which"
        " the version is worse ('worse'), once done."
    )
    error: str
    created_at: datetime
    finished_at: datetime | None
    promoted_at: datetime | None = Field(description="Set when this check let it be promoted.")
    override_reason: str

    @staticmethod
    def resolve_parent(check: GoldCheck) -> UUID | None:
        return check.parent.code if check.parent else None


class PromptVersionDetailOut(PromptVersionOut):
    knowledge_text: str
    rule_notes: str
    exemplars: list[Any]
    calibration: dict[str, Any] = Field(
        description="For the offline annotator: fitted class priors and temperature."
    )
    learned_from: LearnedFromOut
    gold_checks: list[GoldCheckOut]

    @staticmethod
    def resolve_learned_from(version: PromptVersion) -> dict[str, Any]:
        decisions = version.learned_from_decisions
        return {
            "recorded": decisions is not None,
            "n_decisions": None if decisions is None else len(decisions),
            "decisions": decisions,
            "n_images": version.learned_from_images.count(),
            "unrecorded_lineage": [v.number for v in version.unrecorded_lineage()],
        }

    @staticmethod
    def resolve_gold_checks(version: PromptVersion) -> list[GoldCheck]:
        return list(version.gold_checks.select_related("parent"))


def _versions() -> QuerySet[PromptVersion]:
    return PromptVersion.objects.select_related("parent", "created_by")


@router.get("", response=list[PromptVersionOut], summary="List prompt versions, newest first")
@paginate(CursorPagination, ordering=("-number",), page_size=100, max_page_size=500)
def version_list(request: HttpRequest) -> QuerySet[PromptVersion]:
    # As the page: the built-in knowledge becomes version 1 on first use.
    prompt_version_active()
    return _versions()


@router.get("/{code}", response=PromptVersionDetailOut, summary="A prompt version")
def version_detail(request: HttpRequest, code: UUID) -> PromptVersion:
    """The version's knowledge text, rule notes, exemplars and recalibration, its parent
    and status, what it learned from, and its gold-set checks."""
    return get_object_or_404(_versions(), code=code)
