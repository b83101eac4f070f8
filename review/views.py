"""The review queue and review pages."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from review.models import ReviewTask
from seke_app.roles import annotator_required


@annotator_required
def queue(request: HttpRequest) -> HttpResponse:
    open_tasks = ReviewTask.objects.filter(status=ReviewTask.Status.OPEN)
    return render(request, "review/queue.html", {"open_count": open_tasks.count()})
