"""The README's "Use SEKE from Python" script, run as written against a live server.

A real server (pytest-django's, or gunicorn in CI's PostgreSQL pass), a real worker
process for the import and the run, and the script in a new interpreter with httpx:
the only things given are the address, a token and the script's three arguments.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from seke_app.api.tokens import token_create
from seke_app.models import Dataset, GenerationRun
from tests.conftest import draw_face

ROOT = Path(__file__).resolve().parent.parent
N_FACES = 4


def readme_script() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Use SEKE from Python\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block, "the README's Python section has no python block"
    return block.group(1)


def faces_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(N_FACES):
            archive.writestr(f"faces/{i}.png", draw_face(seed=i, smile=i % 2 == 0))
        archive.writestr(
            "faces/manifest.csv",
            "file,split,expression\n0.png,test,happiness\n1.png,test,\n2.png,train,\n3.png,train,\n",
        )
    return path


@pytest.mark.django_db(transaction=True)
def test_the_readme_script_imports_runs_and_saves_the_curated_labels(
    live_server: Any,
    admin_user: User,
    start_worker: Callable[..., Any],
    tmp_path: Path,
) -> None:
    worker = start_worker(("default", "generation"))
    script = tmp_path / "seke_script.py"
    script.write_text(readme_script())
    out = tmp_path / "labels.jsonl"
    env = {
        **os.environ,
        "SEKE_URL": live_server.url,
        "SEKE_TOKEN": token_create(user=admin_user, name="readme").secret,
    }
    result = subprocess.run(
        [sys.executable, str(script), str(faces_zip(tmp_path / "faces.zip")), "readme", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr + result.stdout + worker.output()
    assert f"imported {N_FACES} images" in result.stdout
    dataset = Dataset.objects.get(name="readme")
    run = GenerationRun.objects.get(dataset=dataset)
    assert run.status == GenerationRun.Status.COMPLETED
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["file"] for r in records) == [f"{i}.png" for i in range(N_FACES)]
    by_file = {r["file"]: r for r in records}
    # The manifest's expression is the dataset's own; the others are the run's.
    assert by_file["0.png"]["expression"]["expression"] == "happiness"
    assert by_file["0.png"]["expression"]["provenance"] == "dataset"
    for record in records:
        assert set(record) == {"file", "expression", "va", "aus"}
