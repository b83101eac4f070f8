"""Pages for reviewer quality: gold questions and scores (admins only)."""

from __future__ import annotations

from uuid import UUID

from django.contrib import messages
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from review.models import GoldQuestion, ReviewTask
from review.quality.services import gold_question_set, gold_scores
from review.tasks.forms import DecisionFormError, decision_from_post
from review.tasks.services import ReviewRefused
from seke_app.insights.agreement import reviewer_agreement
from seke_app.models import Annotation, FaceImage
from seke_app.roles import admin_required


@admin_required
def quality(request: HttpRequest) -> HttpResponse:
    context = {
        "scores": gold_scores(),
        "questions": GoldQuestion.objects.select_related("image").filter(active=True)[:200],
        "agreement": reviewer_agreement(annotations=Annotation.objects.all()),
        "adjudications": ReviewTask.objects.filter(kind=ReviewTask.Kind.ADJUDICATION)
        .exclude(status=ReviewTask.Status.DONE)
        .count(),
    }
    return render(request, "review/quality/quality.html", context)


@require_POST
@admin_required
def gold_mark(request: HttpRequest, code: UUID) -> HttpResponse:
    image = get_object_or_404(FaceImage.objects.select_related("dataset"), code=code)
    vocabulary = image.dataset.vocabulary()
    try:
        decision = decision_from_post(request.POST, vocabulary.aus)
        assert isinstance(request.user, User)
        gold_question_set(
            image=image,
            expression=decision.expression,
            valence=decision.valence,
            arousal=decision.arousal,
            aus=decision.aus,
            user=request.user,
        )
    except (ReviewRefused, DecisionFormError) as exc:
        messages.error(request, f"Not saved: {exc}")
    else:
        messages.success(request, "Saved as a gold question: it will appear in reviewers' queues.")
    return redirect("image_detail", code=image.code)


@require_POST
@admin_required
def gold_retire(request: HttpRequest, code: UUID) -> HttpResponse:
    question = get_object_or_404(GoldQuestion, code=code)
    GoldQuestion.objects.filter(id=question.id).update(active=False)
    messages.success(request, "The gold question no longer appears in queues.")
    return redirect("review:quality")
