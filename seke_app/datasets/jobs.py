"""Background jobs of imports: an id in, one service call."""

from __future__ import annotations

from seke_app.datasets.services import dataset_import_run


def run_import(import_id: int) -> None:
    dataset_import_run(import_id=import_id)
