"""FEID, FEAB, Label Studio and the dataset card, checked against their published shapes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from seke_app.engine.formats import evaluator, feab, feid, labelstudio
from seke_app.engine.formats.card import CardStats, card_markdown
from seke_app.engine.formats.records import CuratedRecord, LabelFilter, Provenance
from seke_app.engine.vocab import EXPRESSIONS, FEID_AUS

HUMAN = Provenance(source="human", reviewer="ann", decided_at="2025-01-01T00:00:00+00:00")
DATASET = Provenance(source="dataset", dataset="drawn")


def machine(confidence: float = 0.9) -> Provenance:
    return Provenance(
        source="machine",
        run="r1",
        model="gpt-4o",
        prompt_version=3,
        confidence=confidence,
        n_samples=5,
    )


def record(i: int = 0, **changes: Any) -> CuratedRecord:
    aus = {au: au in (6, 12, 25) for au in FEID_AUS}
    values: dict[str, Any] = {
        "image": f"00000000-0000-0000-0000-{i:012d}",
        "name": f"{i}.png",
        "file": f"faces/ab/{i:064x}.png",
        "image_format": "PNG",
        "expression": "happiness",
        "valence": 0.6834,
        "arousal": -0.25,
        "aus": aus,
        "provenance": {"expression": HUMAN, "va": DATASET, "aus": machine()},
    }
    values.update(changes)
    return CuratedRecord(**values)


# --- Records and filters ---------------------------------------------------------------


def test_it_drops_grains_whose_provenance_is_not_admitted() -> None:
    only_human_aus = LabelFilter(
        sources={
            "expression": frozenset({"human", "dataset", "machine"}),
            "va": frozenset({"human", "dataset", "machine"}),
            "aus": frozenset({"human"}),
        }
    )
    kept = only_human_aus.apply(record())
    assert kept is not None and kept.grains() == ("expression", "va")
    assert "aus" not in kept.provenance_json() and "aus" not in kept.labels_json()


def test_it_applies_the_minimum_confidence_to_machine_labels_only() -> None:
    strict = LabelFilter(min_confidence=0.95)
    kept = strict.apply(record())
    assert kept is not None and kept.grains() == ("expression", "va")
    all_machine = record(provenance={g: machine(0.5) for g in ("expression", "va", "aus")})
    assert strict.apply(all_machine) is None
    assert LabelFilter(grains=("va",)).apply(record()).grains() == ("va",)  # type: ignore[union-attr]


# --- FEID ------------------------------------------------------------------------------


def assert_conversation(conversations: list[dict[str, str]], n_grains: int) -> None:
    """LLaVA / ShareGPT: human and gpt alternate, human first; <image> once, opening turn 1."""
    assert len(conversations) == 2 * n_grains
    for index, turn in enumerate(conversations):
        assert set(turn) == {"from", "value"}
        assert turn["from"] == ("human" if index % 2 == 0 else "gpt")
        assert isinstance(turn["value"], str) and turn["value"]
    assert conversations[0]["value"].startswith("<image>\n")
    assert sum(t["value"].count("<image>") for t in conversations) == 1


def test_it_writes_llava_conversations_for_each_grain() -> None:
    line = feid.llava_line(record(), "faces/ab/x.png", seed=1)
    json.dumps(line)
    assert set(line) == {"id", "image", "conversations", "labels", "provenance"}
    assert line["image"] == "faces/ab/x.png"
    assert_conversation(line["conversations"], 3)
    questions = [t["value"].removeprefix("<image>\n") for t in line["conversations"][::2]]
    for grain, question in zip(("expression", "va", "aus"), questions, strict=True):
        assert question in feid.QUESTIONS[grain]
    assert line["labels"] == {
        "expression": "happiness",
        "valence": 0.683,
        "arousal": -0.25,
        "aus": {f"AU{au}": au in (6, 12, 25) for au in FEID_AUS},
    }
    assert line["provenance"]["expression"] == HUMAN.to_json()
    assert line["provenance"]["aus"]["prompt_version"] == 3


def test_it_draws_the_questions_with_the_seed() -> None:
    def questions(seed: int, i: int) -> list[str]:
        line = feid.llava_line(record(i), "x", seed)
        return [t["value"] for t in line["conversations"][::2]]

    assert questions(7, 1) == questions(7, 1)
    drawn = {tuple(questions(seed, i)) for seed in range(5) for i in range(10)}
    assert len(drawn) > 10


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"valence": -0.0004, "arousal": 1.0, "expression": "neutral"},
        {"aus": {au: False for au in FEID_AUS}},
        {"aus": {1: True, 2: True}, "expression": "surprise"},
    ],
)
def test_it_answers_in_words_that_state_the_label_exactly(changes: dict[str, Any]) -> None:
    rec = record(**changes)
    label = rec.labels_json()
    expression = feid.answer_text(rec, "expression")
    assert evaluator.parse_expression(expression) == label["expression"]
    va = evaluator.parse_va(feid.answer_text(rec, "va"))
    assert va == (label["valence"], label["arousal"])
    aus = evaluator.parse_aus(feid.answer_text(rec, "aus"))
    assert aus == {int(k[2:]): v for k, v in label["aus"].items()}


def test_it_writes_openai_chat_fine_tuning_lines() -> None:
    line = feid.openai_line(record(), "data:image/png;base64,AAAA", seed=0)
    json.dumps(line)
    # The training file holds "messages" only; the labels go to the companion file.
    assert set(line) == {"messages"}
    messages = line["messages"]
    assert messages[0] == {"role": "system", "content": feid.SYSTEM_PROMPT}
    roles = [m["role"] for m in messages[1:]]
    assert roles == ["user", "assistant"] * 3
    for message in messages:
        assert set(message) == {"role", "content"}
        if message["role"] != "user":
            assert isinstance(message["content"], str)
    first = messages[1]["content"]
    assert [part["type"] for part in first] == ["text", "image_url"]
    assert first[1]["image_url"] == {"url": "data:image/png;base64,AAAA"}
    images = [
        part
        for m in messages
        if isinstance(m["content"], list)
        for part in m["content"]
        if part["type"] == "image_url"
    ]
    assert len(images) == 1
    assert feid.labels_line(record())["labels"] == record().labels_json()


def test_it_writes_sharegpt_lines_that_llama_factory_reads() -> None:
    line = feid.sharegpt_line(record(), "images/x.png", seed=0)
    assert set(line) >= {"conversations", "system", "images"}
    assert line["images"] == ["images/x.png"]
    assert_conversation(line["conversations"], 3)
    info = feid.llama_factory_dataset_info("feid_sharegpt.jsonl")["feid"]
    assert info["formatting"] == "sharegpt"
    assert info["columns"] == {"messages": "conversations", "system": "system", "images": "images"}


def test_it_asks_only_about_the_grains_a_record_has() -> None:
    rec = record().without(["va", "aus"])
    line = feid.llava_line(rec, "x", 0)
    assert_conversation(line["conversations"], 1)
    assert set(line["labels"]) == {"expression"}


# --- FEAB ------------------------------------------------------------------------------


def test_it_holds_out_whole_subjects() -> None:
    items = [
        feab.SplitItem(image=f"i{i}", subject=f"s{i % 7}", expression=EXPRESSIONS[i % 8])
        for i in range(70)
    ]
    split = feab.benchmark_split(items, test_fraction=0.3, seed=1)
    assert split.method == "subject-disjoint"
    test_subjects = {i.subject for i in items if i.image in split.test}
    train_subjects = {i.subject for i in items if i.image not in split.test}
    assert not test_subjects & train_subjects
    assert len(split.test) >= 21
    assert split == feab.benchmark_split(items, test_fraction=0.3, seed=1)
    assert any(
        feab.benchmark_split(items, test_fraction=0.3, seed=s).test != split.test
        for s in range(2, 8)
    )


def test_it_stratifies_by_expression_without_subjects() -> None:
    counts = {"happiness": 40, "sadness": 20, "fear": 5}
    items = [
        feab.SplitItem(image=f"{e}{i}", expression=e) for e, n in counts.items() for i in range(n)
    ]
    split = feab.benchmark_split(items, test_fraction=0.2, seed=3)
    assert split.method == "stratified by expression"
    held = {e: sum(1 for i in items if i.expression == e and i.image in split.test) for e in counts}
    assert held == {"happiness": 8, "sadness": 4, "fear": 1}
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        feab.benchmark_split(items, test_fraction=1.0, seed=3)


def test_it_writes_questions_and_answer_keys_that_score_perfectly() -> None:
    records = [record(i, expression=EXPRESSIONS[i % 8], valence=i / 10 - 0.5) for i in range(10)]
    keys = [key for r in records for key in feab.answer_keys(r)]
    questions = [q for r in records for q in feab.questions(r, f"images/{r.image}.png")]
    assert [q["id"] for q in questions] == [k["id"] for k in keys]
    assert {q["grain"] for q in questions} == {"expression", "va", "aus"}
    expression_question = questions[0]
    assert expression_question["options"] == list(EXPRESSIONS)
    assert "neutral" in expression_question["question"]
    # A model that repeats FEID's answer sentences scores perfectly.
    by_id = {r.image: r for r in records}
    predictions = {k["id"]: feid.answer_text(by_id[k["image"]], k["grain"]) for k in keys}
    report = evaluator.score(keys, predictions)
    assert report["expression"]["accuracy"] == 1.0
    assert report["expression"]["macro_f1"] == 1.0
    assert report["va"]["valence"]["rmse"] == 0.0 and report["va"]["valence"]["ccc"] == 1.0
    assert report["aus"]["mean_f1"] == 1.0


# --- Label Studio ----------------------------------------------------------------------


def config_controls(xml: str) -> dict[str, ET.Element]:
    root = ET.fromstring(xml)
    assert root.tag == "View"
    image = root.find("Image")
    assert image is not None and image.get("value") == "$image"
    return {el.get("name") or "": el for el in root if el.tag in ("Choices", "Number")}


def assert_valid_result(item: dict[str, Any], controls: dict[str, ET.Element]) -> None:
    assert set(item) >= {"id", "from_name", "to_name", "type", "value"}
    control = controls[item["from_name"]]
    assert item["to_name"] == control.get("toName") == "image"
    assert item["type"] == control.tag.lower()
    if control.tag == "Choices":
        allowed = {c.get("value") for c in control.findall("Choice")}
        assert set(item["value"]["choices"]) <= allowed
        if control.get("choice") == "single":
            assert len(item["value"]["choices"]) == 1
    else:
        low, high = float(control.get("min", "-inf")), float(control.get("max", "inf"))
        assert low <= item["value"]["number"] <= high


def test_it_writes_label_studio_tasks_its_config_accepts() -> None:
    controls = config_controls(labelstudio.label_config(FEID_AUS))
    assert set(controls) == {"expression", "valence", "arousal", "aus"}
    task = labelstudio.task(record(), "/data/local-files/?d=faces/x.png")
    json.dumps(task)
    assert set(task) == {"data", "annotations", "predictions"}
    assert task["data"]["image"] == "/data/local-files/?d=faces/x.png"
    (annotation,) = task["annotations"]
    (prediction,) = task["predictions"]
    assert [r["from_name"] for r in annotation["result"]] == ["expression", "valence", "arousal"]
    assert [r["from_name"] for r in prediction["result"]] == ["aus"]
    assert prediction["model_version"] == "gpt-4o prompt v3" and prediction["score"] == 0.9
    for item in annotation["result"] + prediction["result"]:
        assert_valid_result(item, controls)


def as_label_studio_export(task: dict[str, Any], **annotation: Any) -> dict[str, Any]:
    """A task as Label Studio exports it after a person submitted the prediction."""
    results = [r for a in task["annotations"] + task["predictions"] for r in a["result"]]
    exported = {"id": 1, "data": task["data"], "predictions": task["predictions"]}
    exported["annotations"] = [
        {
            "id": 10,
            "result": results,
            "was_cancelled": False,
            "created_at": "2025-03-01T10:00:00.000000Z",
            "completed_by": {"id": 3, "email": "ann@example.org"},
            **annotation,
        }
    ]
    return exported


def test_it_reads_its_own_label_studio_tasks_back() -> None:
    for rec in (
        record(1),
        record(2, aus={1: True, 2: False, 4: False}),
        record(3).without(["aus"]),
    ):
        task = as_label_studio_export(labelstudio.task(rec, "x.png"))
        back = labelstudio.labels_from_task(json.loads(json.dumps(task)), FEID_AUS)
        assert back.image == rec.image and back.annotator == "ann@example.org"
        assert back.problems == []
        assert back.expression == rec.expression
        assert (back.valence, back.arousal) == (
            rec.labels_json()["valence"],
            rec.labels_json()["arousal"],
        )
        assert back.aus == rec.aus


def test_it_reads_only_the_latest_annotation_that_was_not_cancelled() -> None:
    task = as_label_studio_export(labelstudio.task(record(), "x.png"))
    later = json.loads(json.dumps(task["annotations"][0]))
    later["created_at"] = "2025-03-02T10:00:00Z"
    later["result"][0]["value"]["choices"] = ["sadness"]
    cancelled = json.loads(json.dumps(later))
    cancelled["created_at"] = "2025-03-03T10:00:00Z"
    cancelled["was_cancelled"] = True
    cancelled["result"][0]["value"]["choices"] = ["anger"]
    task["annotations"] += [cancelled, later]
    assert labelstudio.labels_from_task(task, FEID_AUS).expression == "sadness"
    # Predictions alone are machine output, not labels.
    unlabelled = labelstudio.labels_from_task(
        {"data": {"image": "a/b/c.png"}, "predictions": task["predictions"]}, FEID_AUS
    )
    assert unlabelled.grains() == () and unlabelled.name == "c.png"


def test_it_reports_label_studio_values_it_cannot_use() -> None:
    task = {
        "data": {"image": "x.png"},
        "annotations": [
            {
                "result": [
                    {"from_name": "expression", "value": {"choices": ["joyish"]}},
                    {"from_name": "valence", "value": {"number": 3}},
                    {"from_name": "aus", "value": {"choices": ["AU12", "AU99"]}},
                ]
            }
        ],
    }
    labels = labelstudio.labels_from_task(task, FEID_AUS)
    assert labels.expression is None and labels.valence is None
    assert labels.aus is not None and labels.aus[12] is True
    assert len(labels.problems) == 3


# --- Dataset card ----------------------------------------------------------------------


def test_it_summarises_labels_provenance_and_confidence_in_the_card() -> None:
    stats = CardStats()
    for i in range(4):
        stats.add(
            record(i, provenance={g: machine(0.15 + i * 0.25) for g in ("expression", "va", "aus")})
        )
    stats.add(record(9))
    summary = stats.to_json()
    assert summary["n_records"] == 5
    assert summary["provenance"]["expression"] == {"machine": 4, "human": 1}
    assert summary["expressions"] == {"happiness": 5}
    assert summary["au_rates"]["AU12"] == 1.0 and summary["au_rates"]["AU1"] == 0.0
    assert sum(summary["machine_confidence_histogram"]["va"]) == 4
    assert summary["prompt_versions"] == [3]
    text = card_markdown(stats, title="drawn", summary={"Dataset": "drawn"})
    for heading in (
        "## Provenance",
        "## Expressions",
        "## Valence and arousal",
        "## Action units",
        "## Machine confidence",
    ):
        assert heading in text
    assert "| happiness | 5 (100.0%) |" in text
