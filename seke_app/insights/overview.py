"""What the home page shows: runs at work, what awaits review, recent exports.

Counts of what awaits review come from the review app through the decision
contract (``references.waiting_annotations``): a review task that is open or held.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from django.db.models import Count

from seke_app.insights.references import waiting_annotations
from seke_app.models import Annotation, Dataset, GenerationRun
from seke_app.models.exports import Export

# How many of each the home page lists.
SHOWN = 5


@dataclass
class Overview:
    datasets: Sequence[Dataset]
    running: list[GenerationRun] = field(default_factory=list)
    # Runs with faces awaiting review, most waiting first, with how many.
    awaiting: list[tuple[GenerationRun, int]] = field(default_factory=list)
    n_awaiting: int = 0
    exports: list[Export] = field(default_factory=list)

    @property
    def polling(self) -> bool:
        """Whether something shown is still at work (the page then refreshes)."""
        return bool(self.running) or any(not e.is_settled() for e in self.exports)


def _awaiting() -> tuple[list[tuple[GenerationRun, int]], int]:
    counts = dict(
        Annotation.objects.filter(waiting_annotations())
        .values_list("run_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    runs = GenerationRun.objects.filter(id__in=counts).select_related("dataset")
    ranked = sorted(runs, key=lambda run: (-counts[run.id], -run.id))
    return [(run, counts[run.id]) for run in ranked[:SHOWN]], sum(counts.values())


def home_overview(*, admin: bool) -> Overview:
    """The home page's figures; an annotator sees the datasets and the review count only."""
    datasets = list(Dataset.objects.annotate(n_images=Count("images"))[:20])
    awaiting, n_awaiting = _awaiting()
    if not admin:
        return Overview(datasets=datasets, n_awaiting=n_awaiting)
    running = GenerationRun.objects.exclude(status__in=GenerationRun.FINISHED)
    exports = Export.objects.select_related("dataset")[:SHOWN]
    return Overview(
        datasets=datasets,
        running=list(running.select_related("dataset").order_by("created_at")[:SHOWN]),
        awaiting=awaiting,
        n_awaiting=n_awaiting,
        exports=list(exports),
    )
