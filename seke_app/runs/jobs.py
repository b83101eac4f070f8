"""Background jobs: ids in, one service call, nothing else."""

from __future__ import annotations

from seke_app.runs.batches import run_batch_step
from seke_app.runs.probes import probe_run
from seke_app.runs.services import run_process_chunk


def process_chunk(run_id: int, item_ids: list[int]) -> None:
    run_process_chunk(run_id=run_id, item_ids=item_ids)


def batch_step(run_id: int) -> None:
    run_batch_step(run_id=run_id)


def check_endpoint(probe_id: int) -> None:
    probe_run(probe_id=probe_id)
