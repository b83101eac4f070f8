"""Background jobs of exports: an id in, one service call."""

from __future__ import annotations

from seke_app.exports.services import export_run


def run_export(export_id: int) -> None:
    export_run(export_id=export_id)
