"""Images through the API: curated labels per grain, every filter, pages, history."""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from seke_app.datasets.listing import SCAN_FACTOR, encode_cursor
from seke_app.engine.formats.records import CuratedRecord
from seke_app.engine.vocab import EXPRESSIONS
from seke_app.exports.curation import curated_records
from seke_app.models import Annotation, Dataset, FaceImage, GenerationRun
from seke_app.runs.prompts import prompt_version_active
from tests.api_client import ApiClient
from tests.factories import make_dataset, record_decision

pytestmark = pytest.mark.django_db

IMAGES = "/api/v1/images"


def make_images(n: int, *, name: str = "faces", **fields: Any) -> tuple[Dataset, list[FaceImage]]:
    dataset = Dataset.objects.get_or_create(name=name)[0]
    start = dataset.images.count()
    rows = []
    for i in range(start, start + n):
        sha = hashlib.sha256(f"{name}-{i}".encode()).hexdigest()
        values = {k: (v(i) if callable(v) else v) for k, v in fields.items()}
        rows.append(
            FaceImage(
                dataset=dataset,
                sha256=sha,
                file=f"faces/{sha[:2]}/{sha}.png",
                image_format="PNG",
                width=64,
                height=48,
                original_name=f"{i}.png",
                **values,
            )
        )
    return dataset, FaceImage.objects.bulk_create(rows)


def make_run(dataset: Dataset, threshold: float = 0.5) -> GenerationRun:
    return GenerationRun.objects.create(
        dataset=dataset,
        backend="openai",
        model_name="gpt-4o",
        prompt_version=prompt_version_active(),
        status=GenerationRun.Status.COMPLETED,
        review_threshold=threshold,
    )


def annotate(
    image: FaceImage,
    run: GenerationRun,
    *,
    expression: str | None = "happiness",
    valence: float | None = 0.5,
    arousal: float | None = 0.25,
    aus: dict[str, bool] | None = None,
    confidence: float = 0.9,
    held: bool = False,
) -> Annotation:
    return Annotation.objects.create(
        run=run,
        image=image,
        prompt_version=run.prompt_version,
        expression=expression,
        expression_confidence=confidence,
        valence=valence,
        arousal=arousal,
        va_confidence=round(confidence - 0.05, 4),
        aus={"12": True, "4": False} if aus is None else aus,
        au_confidence=round(confidence - 0.1, 4),
        confidence=round(confidence - 0.1, 4),
        flagged=held or confidence - 0.1 < run.review_threshold,
        held=held,
        n_samples=5,
    )


def walk(api: ApiClient, **params: Any) -> Iterator[dict[str, Any]]:
    """Every page of the list with these filters, following ``next``."""
    response = api.get(IMAGES, **params)
    while True:
        assert response.status_code == 200, response.json()
        page = response.json()
        yield page
        if page["next"] is None:
            return
        response = api.client.get(page["next"], headers=api.headers)


def listed(api: ApiClient, **params: Any) -> list[str]:
    return [image["code"] for page in walk(api, **params) for image in page["results"]]


# --- One image's labels ---------------------------------------------------------------


def test_it_lists_each_image_with_the_label_seke_stands_behind_per_grain(
    admin_user: User, annotator: User
) -> None:
    dataset, (known, machine, flagged, corrected, rejected) = make_images(
        5, split=lambda i: "test" if i < 2 else "train"
    )
    FaceImage.objects.filter(id=known.id).update(known_expression="fear", known_aus={"1": True})
    run = make_run(dataset)
    for image in (known, machine, corrected, rejected):
        annotate(image, run, confidence=0.8)
    annotate(flagged, run, held=True)
    decision = record_decision(
        corrected.annotations.get(), annotator, "correct", expression="anger"
    )
    record_decision(rejected.annotations.get(), annotator, "reject_image")

    page = ApiClient(admin_user).get(IMAGES, dataset=str(dataset.code)).json()
    images = {image["file_name"]: image for image in page["results"]}
    assert [i["file_name"] for i in page["results"]] == [
        "0.png",
        "1.png",
        "2.png",
        "3.png",
        "4.png",
    ]
    assert page["next"] is None

    first = images["0.png"]
    assert first["code"] == str(known.code) and first["split"] == "test"
    assert first["dataset"] == {"code": str(dataset.code), "name": "faces"}
    assert (first["width"], first["height"], first["image_format"]) == (64, 48, "PNG")
    assert first["file_url"] == "http://testserver" + reverse(
        "api:image-file", kwargs={"code": known.code}
    )
    assert first["labels"]["expression"] == {
        "provenance": "dataset",
        "expression": "fear",
        "confidence": None,
        "reviewer": None,
        "decided_at": None,
        "decision": None,
        "run": None,
        "model": None,
        "prompt_version": None,
        "n_samples": None,
    }
    assert first["labels"]["aus"]["aus"] == {"1": True}
    assert first["labels"]["va"]["provenance"] == "machine"
    assert first["labels"]["va"]["confidence"] == 0.75

    expression = images["1.png"]["labels"]["expression"]
    assert expression["provenance"] == "machine" and expression["expression"] == "happiness"
    assert (expression["confidence"], expression["run"], expression["n_samples"]) == (
        0.8,
        str(run.code),
        5,
    )
    assert images["2.png"]["labels"] == {"expression": None, "va": None, "aus": None}
    human = images["3.png"]["labels"]["expression"]
    assert (human["provenance"], human["expression"], human["reviewer"]) == (
        "human",
        "anger",
        "ann",
    )
    # JSON states times to the millisecond.
    decided = datetime.fromisoformat(human["decided_at"])
    assert abs(decided - decision.created_at) < timedelta(milliseconds=1)
    assert images["3.png"]["labels"]["va"]["provenance"] == "human"
    assert images["4.png"]["rejected"] is True
    assert images["4.png"]["labels"] == {"expression": None, "va": None, "aus": None}


def test_it_shows_one_image_to_annotators_with_its_history(
    admin_user: User, annotator: User, teammate: User
) -> None:
    dataset, (image,) = make_images(1, known_expression="fear", known_valence=0.1)
    old, new = make_run(dataset), make_run(dataset, threshold=0.95)
    annotate(image, old, expression="sadness", confidence=0.7)
    flagged = annotate(image, new, expression="surprise", confidence=0.8)
    record_decision(flagged, annotator, "accept")
    record_decision(flagged, teammate, "correct", kind="second", expression="anger")
    record_decision(flagged, annotator, "correct", undone=True, expression="disgust")

    api = ApiClient(annotator)
    plain = api.get(f"{IMAGES}/{image.code}").json()
    assert plain["history"] is None
    # The two reviews disagree on the expression: unresolved, so the dataset's label stands.
    assert plain["labels"]["expression"]["provenance"] == "dataset"
    found = api.get(f"{IMAGES}/{image.code}", history="true").json()
    assert found["labels"] == plain["labels"]
    history = found["history"]
    assert history["known"] == {"expression": "fear", "valence": 0.1, "arousal": None, "aus": None}
    assert history["unresolved"] == ["expression"]
    assert history["review_status"] == "reviews disagree"
    assert [a["code"] for a in history["annotations"]] == [
        str(flagged.code),
        str(image.annotations.get(run=old).code),
    ]
    newest = history["annotations"][0]
    assert newest["run"] == {"code": str(new.code), "label": new.label}
    assert (newest["expression"], newest["accepted"], newest["flagged"]) == (
        "surprise",
        False,
        True,
    )
    assert history["annotations"][1]["accepted"] is True
    # The undone decision does not count, and is not listed.
    decisions = history["decisions"]
    assert [(d["reviewer"], d["kind"], d["action"]) for d in decisions] == [
        ("tom", "second", "correct"),
        ("ann", "first", "accept"),
    ]
    assert decisions[0]["labels"]["expression"] == "anger"
    assert decisions[0]["entered"]["valence"] is None
    assert decisions[1]["labels"]["expression"] == "surprise"
    assert decisions[1]["annotation"] == str(flagged.code)


def test_it_answers_404_for_an_unknown_image(annotator: User) -> None:
    response = ApiClient(annotator).get(f"{IMAGES}/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404 and response.json()["detail"]


def test_an_annotator_may_open_an_image_but_not_list_them(annotator: User) -> None:
    _, (image,) = make_images(1)
    api = ApiClient(annotator)
    assert api.get(f"{IMAGES}/{image.code}", history="true").status_code == 200
    response = api.get(IMAGES)
    assert response.status_code == 403 and "admins" in response.json()["detail"]


# --- Filters ------------------------------------------------------------------------


def test_it_keeps_to_a_dataset_and_a_split(admin_user: User) -> None:
    first, images = make_images(4, split=lambda i: "test" if i % 2 else "train")
    make_images(3, name="other")
    api = ApiClient(admin_user)
    assert listed(api, dataset=str(first.code)) == [str(i.code) for i in images]
    assert listed(api, dataset=str(first.code), split="test") == [
        str(images[1].code),
        str(images[3].code),
    ]
    assert len(listed(api)) == 7


def test_it_filters_on_the_curated_label_not_on_a_source_it_overrides(
    admin_user: User, annotator: User, teammate: User
) -> None:
    dataset, images = make_images(6)
    run = make_run(dataset)
    # 0: the dataset says fear, a reviewer says happiness: happiness (human).
    FaceImage.objects.filter(id=images[0].id).update(known_expression="fear")
    record_decision(annotate(images[0], run, held=True), annotator, "accept")
    # 1: the dataset says fear; disagreeing reviews leave it standing: fear (dataset).
    FaceImage.objects.filter(id=images[1].id).update(known_expression="fear")
    reviewed = annotate(images[1], run, held=True)
    record_decision(reviewed, annotator, "accept")
    record_decision(reviewed, teammate, "correct", kind="second", expression="anger")
    # 2: an accepted machine label of fear (machine); 3: a held one (no label).
    annotate(images[2], run, expression="fear", confidence=0.7)
    annotate(images[3], run, expression="fear", held=True)
    # 4: the dataset says fear, but the image is rejected by a reviewer: no label.
    FaceImage.objects.filter(id=images[4].id).update(known_expression="fear")
    record_decision(annotate(images[4], run, held=True), annotator, "reject_image")
    # 5: the dataset says fear and the image is marked rejected.
    FaceImage.objects.filter(id=images[5].id).update(known_expression="fear", rejected=True)

    api = ApiClient(admin_user)
    code = [str(image.code) for image in images]
    assert listed(api, expression="fear") == [code[1], code[2]]
    assert listed(api, expression="happiness") == [code[0]]
    assert listed(api, provenance="human") == [code[0]]
    assert listed(api, provenance="dataset") == [code[1]]
    assert listed(api, provenance="machine") == [code[2]]
    assert listed(api, provenance="machine", expression="fear") == [code[2]]
    # The reviews of 1 agree on VA: it is human there.
    assert listed(api, provenance="human", grain="va") == [code[0], code[1]]
    assert listed(api, provenance="machine", grain="va") == [code[2]]
    assert listed(api, min_confidence=0.75) == []
    assert listed(api, min_confidence=0.7, max_confidence=0.7) == [code[2]]
    assert listed(api, max_confidence=0.66, grain="va") == [code[2]]
    assert listed(api, min_confidence=0.5, provenance="human") == []


def _records(dataset: Dataset) -> dict[str, CuratedRecord]:
    """The export's curated records by image code (rejected images left out)."""
    return {
        record.image: record
        for chunk in curated_records(dataset=dataset)
        for record in chunk
        if record is not None
    }


def _expected(records: dict[str, CuratedRecord], **filters: Any) -> set[str]:
    grain = filters.get("grain", "expression")
    low, high = filters.get("min_confidence"), filters.get("max_confidence")
    found = set()
    for code, record in records.items():
        source = record.provenance.get(grain)
        if "expression" in filters and record.expression != filters["expression"]:
            continue
        if "provenance" in filters and (source is None or source.source != filters["provenance"]):
            continue
        if low is not None or high is not None:
            if source is None or source.source != "machine" or source.confidence is None:
                continue
            if (low is not None and source.confidence < low) or (
                high is not None and source.confidence > high
            ):
                continue
        found.add(code)
    return found


def _random_labels(rng: random.Random) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if rng.random() < 0.6:
        values["expression"] = rng.choice(EXPRESSIONS[:4])
    if rng.random() < 0.5:
        values["valence"], values["arousal"] = rng.choice([(0.5, 0.2), (-0.6, 0.4)])
    if rng.random() < 0.5:
        values["aus"] = rng.choice([{"12": True, "6": True}, {"4": True, "1": True}, {}])
    return values


def random_world(n: int, seed: int, reviewers: list[User], name: str = "") -> Dataset:
    """``n`` images with every mix of dataset labels, machine labels (accepted, held,
    under the threshold, missing grains) and decisions (agreeing and disagreeing
    reviews, adjudications, rejections, undone ones)."""
    rng = random.Random(seed)
    dataset, images = make_images(
        n,
        name=name or f"random-{seed}",
        known_expression=lambda i: rng.choice([None, None, *EXPRESSIONS[:4]]),
        known_valence=lambda i: rng.choice([None, 0.3]),
        known_arousal=lambda i: rng.choice([None, -0.3]),
        known_aus=lambda i: rng.choice([None, None, {}, {"12": True}, {"1": False}]),
        rejected=lambda i: rng.random() < 0.05,
    )
    runs = [make_run(dataset, threshold=t) for t in (0.4, 0.6)]
    for image in images:
        annotations = []
        for run in rng.sample(runs, rng.randint(0, 2)):
            annotations.append(
                annotate(
                    image,
                    run,
                    expression=rng.choice([None, *EXPRESSIONS[:4]]),
                    valence=rng.choice([None, 0.2, -0.4]),
                    aus=rng.choice([{}, {"12": True}, {"4": True, "1": True}]),
                    confidence=rng.choice([0.5, 0.65, 0.8, 0.95]),
                    held=rng.random() < 0.2,
                )
            )
        if annotations and rng.random() < 0.5:
            for kind in rng.choice([["first"], ["first", "second"], ["first", "adjudication"]]):
                action = rng.choice(["accept", "correct", "correct", "reject_image"])
                values = _random_labels(rng) if action == "correct" else {}
                record_decision(
                    rng.choice(annotations),
                    rng.choice(reviewers),
                    action,
                    kind=kind,
                    undone=rng.random() < 0.1,
                    **values,
                )
    return dataset


FILTERS: list[dict[str, Any]] = [
    {},
    *({"expression": e} for e in EXPRESSIONS[:5]),
    *(
        {"grain": grain, "provenance": source}
        for grain in ("expression", "va", "aus")
        for source in ("human", "dataset", "machine")
    ),
    {"expression": "happiness", "provenance": "machine"},
    {"expression": "sadness", "provenance": "human"},
    {"min_confidence": 0.8},
    {"max_confidence": 0.7},
    {"min_confidence": 0.55, "max_confidence": 0.85, "grain": "va"},
    {"min_confidence": 0.6, "grain": "aus", "expression": "fear"},
]


def test_every_filter_finds_exactly_what_curation_stands_behind(
    admin_user: User, annotator: User, teammate: User
) -> None:
    dataset = random_world(80, seed=7, reviewers=[annotator, teammate, admin_user])
    records = _records(dataset)
    rejected = {str(c) for c in dataset.images.values_list("code", flat=True)} - set(records)
    api = ApiClient(admin_user)
    sizes = set()
    for filters in FILTERS:
        found = listed(api, dataset=str(dataset.code), page_size=7, **filters)
        assert len(found) == len(set(found)), filters
        if filters:
            assert set(found) == _expected(records, **filters), filters
        else:
            assert len(found) == 80 and rejected <= set(found)
        assert found == sorted(found, key=lambda c: dataset.images.get(code=c).id)
        sizes.add(len(found))
    # The world is varied enough that the filters tell images apart.
    assert len(sizes) > 8


# --- Pages ------------------------------------------------------------------------------


def test_walking_the_pages_returns_every_image_exactly_once(admin_user: User) -> None:
    _, images = make_images(23)
    api = ApiClient(admin_user)
    pages = list(walk(api, page_size=5))
    assert [len(page["results"]) for page in pages] == [5, 5, 5, 5, 3]
    assert [i["code"] for page in pages for i in page["results"]] == [str(i.code) for i in images]
    assert pages[0]["next"].startswith("http://testserver/api/v1/images?")
    assert len(listed(api)) == 23
    assert len(listed(api, page_size=23)) == 23


def test_a_filtered_page_may_be_short_while_more_follow(admin_user: User, annotator: User) -> None:
    # Decided images whose reviews say anger pass the SQL condition for "fear" (a
    # reviewer might have said fear) and are turned down by their curated records.
    scanned = SCAN_FACTOR * 3 + 1
    dataset, images = make_images(2 * scanned + 1)
    run = make_run(dataset)
    for image in images[:-1]:
        record_decision(annotate(image, run, held=True), annotator, "correct", expression="anger")
    annotate(images[-1], run, expression="fear")
    pages = list(walk(ApiClient(admin_user), expression="fear", page_size=3))
    # Each page read its candidates, found none, and continues after the last one read.
    assert [len(page["results"]) for page in pages] == [0, 0, 1]
    assert pages[-1]["results"][0]["code"] == str(images[-1].code)


def test_the_queries_per_page_do_not_grow_with_the_data(
    admin_user: User, annotator: User, teammate: User
) -> None:
    api = ApiClient(admin_user)
    api.get("/api/v1/me")  # The token's first use is noted once; later uses are not.

    def queries(**params: Any) -> list[int]:
        counts = []
        for page in (None, "middle"):
            if page:
                params["cursor"] = encode_cursor(dataset.images.order_by("id")[10].id)
            with CaptureQueriesContext(connection) as captured:
                response = api.get(IMAGES, dataset=str(dataset.code), page_size=10, **params)
            assert response.status_code == 200
            counts.append(len(captured))
        return counts

    reviewers = [annotator, teammate]
    dataset = random_world(40, seed=1, reviewers=reviewers, name="growing")
    small = {key: queries(**filters) for key, filters in _query_filters()}
    for seed in (2, 3):
        # More images, annotations and decisions in the same dataset.
        random_world(60, seed=seed, reviewers=reviewers, name="growing")
    assert dataset.images.count() == 160
    large = {key: queries(**filters) for key, filters in _query_filters()}
    assert large == small
    assert max(count for counts in small.values() for count in counts) <= 7


def _query_filters() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("none", {}),
        ("expression", {"expression": "happiness"}),
        ("human", {"provenance": "human"}),
        ("confidence", {"min_confidence": 0.6, "grain": "va"}),
    ]


# --- Refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"dataset": "00000000-0000-0000-0000-000000000000"}, "dataset"),
        ({"expression": "joy"}, "expression"),
        ({"provenance": "oracle"}, "provenance"),
        ({"grain": "pose"}, "grain"),
        ({"min_confidence": "1.5"}, "min_confidence"),
        ({"min_confidence": "0.8", "max_confidence": "0.2"}, "min_confidence"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b"after=-1").decode()}, "cursor"),
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "501"}, "page_size"),
    ],
)
def test_it_refuses_a_bad_filter_with_a_message(
    admin_user: User, params: dict[str, str], field: str
) -> None:
    make_images(2)
    response = ApiClient(admin_user).get(IMAGES, **params)
    assert response.status_code == 422, response.json()
    body = response.json()
    assert field in body["detail"] and body["errors"]


def test_a_cursor_from_another_time_still_continues_after_its_image(admin_user: User) -> None:
    _, images = make_images(4)
    FaceImage.objects.filter(id=images[1].id).delete()
    found = listed(ApiClient(admin_user), cursor=encode_cursor(images[1].id))
    assert found == [str(images[2].code), str(images[3].code)]


def test_a_token_fetches_an_images_file(tmp_path: Path, annotator: User) -> None:
    dataset = make_dataset(tmp_path, n=1)
    image = dataset.images.get()
    api = ApiClient(annotator)
    listed = api.get(f"/api/v1/images/{image.code}").json()
    response = api.get(listed["file_url"])
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == image.file.open("rb").read()
    image.file.delete(save=False)
    missing = api.get(listed["file_url"])
    assert missing.status_code == 404 and "missing" in missing.json()["detail"]
