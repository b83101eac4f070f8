"""The endpoint probe: what the configured endpoint supports, stored and used by runs.

The engine's probe runs against fake endpoints that lack each capability in turn;
the service stores its answers; the command prints them; the run form shows them
and its button queues a check; and a run's client starts from them.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from seke_app.engine.llm.client import ClientConfig, VLLMClient
from seke_app.engine.llm.probe import (
    CAPABILITIES,
    STEPS,
    Answer,
    Finding,
    ProbeFailed,
    format_mode,
    probe_endpoint,
)
from seke_app.engine.types import AnnotationRequest
from seke_app.engine.vocab import Vocabulary
from seke_app.models import EndpointProbe, GenerationRun
from seke_app.runs.backends import BackendUnavailable, backend_for
from seke_app.runs.probes import (
    ProbeRefused,
    configured_for,
    latest_probe,
    probe_create,
    probe_run,
)
from seke_app.runs.prompts import prompt_version_active
from tests.conftest import client_for, draw_face
from tests.fake_openai import FakeOpenAI, Fault
from tests.workers import emptied_queue, work_in_process

KEY = "sk-test-probe-Zq8v3"

_own_queue = emptied_queue("default")


def client_at(server: FakeOpenAI, model: str = "gpt-4o") -> VLLMClient:
    config = ClientConfig(
        base_url=server.base_url, api_key=KEY, model=model, max_retries=0, timeout_s=5
    )
    return VLLMClient(config)


def probe(**switches: Any) -> tuple[dict[str, Answer], dict[str, str], FakeOpenAI]:
    with (
        FakeOpenAI(**({"expression_logprobs": {}} | switches)) as server,
        client_at(server) as client,
    ):
        result = probe_endpoint(client)
    answers = {name: f.answer for name, f in result.findings.items()}
    evidence = {name: f.evidence for name, f in result.findings.items()}
    return answers, evidence, server


ALL_YES = {
    "images": Answer.YES,
    "n": Answer.YES,
    "json_schema": Answer.YES,
    "json_object": Answer.UNKNOWN,
    "logprobs": Answer.YES,
    "batch": Answer.YES,
}


def test_it_finds_everything_on_a_full_endpoint() -> None:
    with FakeOpenAI(expression_logprobs={}) as server, client_at(server) as client:
        steps: list[int] = []
        result = probe_endpoint(client, progress=steps.append)
    assert {name: f.answer for name, f in result.findings.items()} == ALL_YES
    assert result.findings["json_object"].evidence == "not checked"
    assert list(result.findings) == list(CAPABILITIES)
    assert steps == list(range(1, STEPS + 1))
    assert result.priced and result.calls == 5
    assert result.single_call_s > 0 and result.median_call_s > 0
    # The probe's calls are small: a few tokens back each, and nothing is created.
    chats = [r.body for r in server.requests if r.path.endswith("/chat/completions")]
    assert all(body["max_tokens"] <= 40 for body in chats)
    assert [r.path for r in server.requests if not r.path.endswith("completions")] == [
        "/v1/batches?limit=1"
    ]
    assert result.usage.requests == 5 and result.usage.cost_usd > 0


# switch -> (the capability that must be a "no", words its evidence must contain)
LACKING = {
    "reject_images": ("images", "does not support image"),
    "reject_n": ("n", "Only n=1"),
    "ignore_n": ("n", "asked for 2 choices, got 1"),
    "reject_json_schema": ("json_schema", "response_format"),
    "reject_logprobs": ("logprobs", "is not supported with this model"),
    "ignore_logprobs": ("logprobs", "carries no log-probabilities"),
}


@pytest.mark.parametrize("switch", sorted(LACKING))
def test_it_finds_what_the_endpoint_lacks(switch: str) -> None:
    answers, evidence, _ = probe(**{switch: True})
    lacking, words = LACKING[switch]
    assert answers[lacking] == Answer.NO
    assert words in evidence[lacking]
    expected = {**ALL_YES, lacking: Answer.NO}
    if switch == "reject_json_schema":
        expected["json_object"] = Answer.YES
    assert answers == expected


def test_it_finds_no_batch_api_from_a_404() -> None:
    answers, evidence, _ = probe(batch=False)
    assert answers == {**ALL_YES, "batch": Answer.NO}
    assert evidence["batch"].startswith("GET /batches: 404")


@pytest.mark.parametrize("path", ["/batches?limit=1", "/files"])
def test_the_fake_lists_batches_and_files_only_with_batch_on(path: str) -> None:
    with FakeOpenAI(expression_logprobs={}) as server:
        with urllib.request.urlopen(server.base_url + path) as reply:
            assert json.loads(reply.read())["data"] == []
        server.batch = False
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.base_url + path)
        assert refused.value.code == 404


def test_it_steps_down_to_no_structured_output() -> None:
    answers, evidence, _ = probe(reject_json_schema=True, reject_json_object=True)
    assert answers["json_schema"] == answers["json_object"] == Answer.NO
    assert "json_object" in evidence["json_object"]
    assert format_mode({name: Finding(a) for name, a in answers.items()}) == "none"


def test_a_check_that_gets_no_answer_is_unknown_not_no() -> None:
    with FakeOpenAI(expression_logprobs={}) as server, client_at(server) as client:
        # The plain call is answered as usual, the image call meets a 503.
        server.script(Fault("hang", hang_s=0), Fault("503", retry_after=None))
        result = probe_endpoint(client)
    assert result.findings["images"].answer == Answer.UNKNOWN
    assert "503" in result.findings["images"].evidence


def test_it_fails_clearly_when_the_key_is_refused() -> None:
    with (
        FakeOpenAI(api_key="sk-other", expression_logprobs={}) as server,
        client_at(server) as client,
        pytest.raises(ProbeFailed, match="refused the credentials"),
    ):
        probe_endpoint(client)
    assert server.request_count == 1


def test_it_fails_clearly_when_nothing_listens() -> None:
    with FakeOpenAI(expression_logprobs={}) as server:
        base_url = server.base_url
    config = ClientConfig(base_url=base_url, api_key=KEY, model="gpt-4o", max_retries=0)
    with VLLMClient(config) as client, pytest.raises(ProbeFailed, match="could not connect"):
        probe_endpoint(client)


def test_an_unknown_price_is_said_so() -> None:
    with (
        FakeOpenAI(expression_logprobs={}) as server,
        client_at(server, model="llava-13b") as client,
    ):
        result = probe_endpoint(client)
    assert not result.priced and result.usage.cost_usd == 0


def test_a_client_config_refuses_an_unknown_format_mode() -> None:
    with pytest.raises(ValueError, match="not a format mode"):
        ClientConfig(base_url=None, api_key=KEY, model="gpt-4o", format_mode="xml")  # type: ignore[arg-type]


# -- stored, shown, used -------------------------------------------------------


@pytest.fixture
def endpoint(settings: Any) -> Iterator[FakeOpenAI]:
    with FakeOpenAI(expression_logprobs={}) as server:
        settings.OPENAI_API_KEY = KEY
        settings.OPENAI_BASE_URL = server.base_url
        settings.SEKE_MODEL = "gpt-4o"
        yield server


def checked() -> EndpointProbe:
    made = probe_create(enqueue=False)
    probe_run(probe_id=made.id)
    made.refresh_from_db()
    return made


@pytest.mark.django_db
def test_the_answers_are_stored_with_the_model(endpoint: FakeOpenAI) -> None:
    endpoint.ignore_n = True
    endpoint.batch = False
    stored = checked()
    assert stored.status == "done" and stored.n_done == stored.n_total == STEPS
    assert (stored.base_url, stored.model_name) == (endpoint.base_url, "gpt-4o")
    assert (stored.n, stored.batch, stored.images, stored.logprobs) == ("no", "no", "yes", "yes")
    assert stored.evidence["n"] == "asked for 2 choices, got 1"
    assert set(stored.evidence) == {"n", "batch", "json_object"}
    assert stored.priced and stored.median_call_s and stored.checked_at is not None
    # The key is nowhere in the row.
    row = EndpointProbe.objects.filter(id=stored.id).values().get()
    assert KEY not in json.dumps(row, default=str)
    assert latest_probe(endpoint.base_url + "/", "gpt-4o") == stored
    assert latest_probe(endpoint.base_url, "gpt-4o-mini") is None


@pytest.mark.django_db
def test_a_failed_check_is_stored_with_its_reason_and_never_used(endpoint: FakeOpenAI) -> None:
    endpoint.api_key = "sk-other"
    stored = checked()
    assert stored.status == "failed"
    assert "refused the credentials" in stored.error and KEY not in stored.error
    assert latest_probe(endpoint.base_url, "gpt-4o") is None


@pytest.mark.django_db
def test_no_key_refuses_the_check(settings: Any) -> None:
    settings.OPENAI_API_KEY = ""
    with pytest.raises(ProbeRefused, match="no OPENAI_API_KEY"):
        probe_create(enqueue=False)
    assert not EndpointProbe.objects.exists()


def run_command(*args: str) -> str:
    out = io.StringIO()
    call_command("seke_check_endpoint", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_the_command_prints_a_table(endpoint: FakeOpenAI) -> None:
    endpoint.reject_logprobs = True
    out = run_command("--model", "gpt-4o-mini")
    assert f"gpt-4o-mini at {endpoint.base_url}" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "yes" in lines["images"]
    assert "no" in lines["log-probs"] and "is not supported with this model" in lines["log-probs"]
    assert "price known" in out and "median" in out
    stored = EndpointProbe.objects.get()
    assert stored.model_name == "gpt-4o-mini" and stored.logprobs == "no"


@pytest.mark.django_db
def test_the_command_says_price_unknown(endpoint: FakeOpenAI) -> None:
    assert "price unknown" in run_command("--model", "llava-13b")


@pytest.mark.django_db
def test_the_command_fails_when_the_key_is_refused(endpoint: FakeOpenAI) -> None:
    endpoint.api_key = "sk-other"
    with pytest.raises(CommandError, match="refused the credentials") as raised:
        run_command()
    assert KEY not in str(raised.value)


@pytest.mark.django_db
def test_the_command_fails_when_nothing_listens(settings: Any) -> None:
    with FakeOpenAI(expression_logprobs={}) as server:
        base_url = server.base_url
    settings.OPENAI_API_KEY = KEY
    settings.OPENAI_BASE_URL = base_url
    with pytest.raises(CommandError, match="could not connect"):
        run_command()


@pytest.mark.django_db
def test_the_command_needs_a_key(settings: Any) -> None:
    settings.OPENAI_API_KEY = ""
    with pytest.raises(CommandError, match="no OPENAI_API_KEY"):
        run_command()


# -- runs start from the stored answers ---------------------------------------


def _backend_client(model: str = "gpt-4o") -> Any:
    version = prompt_version_active()
    return backend_for(GenerationRun.Backend.OPENAI, model, version, check_only=True)


@pytest.mark.django_db
def test_a_run_starts_with_the_stored_capabilities(endpoint: FakeOpenAI) -> None:
    endpoint.reject_n = True
    endpoint.reject_json_schema = True
    checked()
    config = configured_for(
        ClientConfig(base_url=endpoint.base_url, api_key=KEY, model="gpt-4o"),
        latest_probe(endpoint.base_url, "gpt-4o"),
    )
    assert (config.supports_n, config.format_mode, config.supports_logprobs) == (
        False,
        "json_object",
        True,
    )
    sent_before = endpoint.request_count
    with VLLMClient(config) as client:
        result = client.chat(
            [{"role": "user", "content": "hi"}],
            n=3,
            json_schema={"type": "object", "properties": {}},
        )
    assert len(result.choices) == 3
    bodies = [r.body for r in endpoint.requests[sent_before:]]
    # Three single requests in json_object mode: no 400 to learn from.
    assert len(bodies) == 3
    assert all("n" not in b and b["response_format"] == {"type": "json_object"} for b in bodies)


@pytest.mark.django_db
def test_a_run_backend_sends_no_n_and_the_format_that_works(endpoint: FakeOpenAI) -> None:
    endpoint.reject_n = True
    endpoint.reject_json_schema = True
    checked()
    sent_before = endpoint.request_count
    backend = _backend_client()
    try:
        request = AnnotationRequest(image_bytes=draw_face(), vocabulary=Vocabulary())
        samples = backend.sample(request, 3, 1.0)
    finally:
        backend.close()
    assert len(samples) == 3
    bodies = [r.body for r in endpoint.requests[sent_before:]]
    # No request was refused: none asked for n, none for a JSON schema.
    assert len(bodies) == 3
    assert all("n" not in b and b["response_format"] == {"type": "json_object"} for b in bodies)


@pytest.mark.django_db
def test_the_backend_for_a_run_reads_the_latest_check(endpoint: FakeOpenAI) -> None:
    endpoint.ignore_n = True
    checked()
    backend = _backend_client()
    try:
        client = backend.client  # type: ignore[attr-defined]
        assert client.supports_n is False
        assert client.response_format_mode == "json_schema"
        assert client.supports_logprobs is True
    finally:
        backend.close()


@pytest.mark.django_db
def test_a_model_that_refused_images_is_refused_for_runs(endpoint: FakeOpenAI) -> None:
    endpoint.reject_images = True
    checked()
    with pytest.raises(BackendUnavailable, match="did not take images"):
        _backend_client()
    # Another model on the same endpoint was not checked: nothing is assumed.
    _backend_client("gpt-4o-mini").close()


@pytest.mark.django_db
def test_without_a_check_the_client_finds_out_as_before(endpoint: FakeOpenAI) -> None:
    backend = _backend_client()
    try:
        client = backend.client  # type: ignore[attr-defined]
        assert client.supports_n is None and client.response_format_mode == "json_schema"
    finally:
        backend.close()


# -- the run form --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_run_form_shows_the_latest_answers(endpoint: FakeOpenAI, admin_user: User) -> None:
    endpoint.reject_logprobs = True
    stored = checked()
    EndpointProbe.objects.filter(id=stored.id).update(
        finished_at=timezone.now() - timezone.timedelta(minutes=5)
    )
    page = client_for(admin_user).get(reverse("run_new"))
    text = page.content.decode()
    assert "Checked 5\xa0minutes ago" in text
    assert "images ✓" in text and "log-probs ✗" in text
    assert "is not supported with this model" in text and "price known" in text
    assert "Check the endpoint" in text


@pytest.mark.django_db(transaction=True)
def test_the_button_queues_a_check_that_a_worker_runs(
    endpoint: FakeOpenAI, admin_user: User
) -> None:
    web = client_for(admin_user)
    page = web.post(
        reverse("endpoint_check"), {"model_name": "gpt-4o-mini"}, HTTP_HX_REQUEST="true"
    )
    assert page.status_code == 200
    queued = EndpointProbe.objects.get()
    assert queued.status == "queued" and queued.model_name == "gpt-4o-mini"
    assert "waiting for a worker on the <code>default</code> queue" in page.content.decode()
    assert endpoint.request_count == 0
    work_in_process("default")
    queued.refresh_from_db()
    assert queued.status == "done"
    status = web.get(reverse("endpoint_status"), {"model_name": "gpt-4o-mini"})
    assert "images ✓" in status.content.decode()


@pytest.mark.django_db
def test_only_admins_check_the_endpoint(
    endpoint: FakeOpenAI, annotator: User, outsider: User, admin_user: User
) -> None:
    for user, expected in ((None, 302), (outsider, 403), (annotator, 403)):
        assert client_for(user).post(reverse("endpoint_check")).status_code == expected
        assert client_for(user).get(reverse("endpoint_status")).status_code == expected
    assert not EndpointProbe.objects.exists()
    assert client_for(admin_user).get(reverse("endpoint_check")).status_code == 405


@pytest.mark.django_db
def test_the_button_without_a_key_says_why(settings: Any, admin_user: User) -> None:
    settings.OPENAI_API_KEY = ""
    page = client_for(admin_user).post(reverse("endpoint_check"), HTTP_HX_REQUEST="true")
    assert "no OPENAI_API_KEY" in page.content.decode()
    assert not EndpointProbe.objects.exists()


@pytest.mark.django_db
def test_the_button_without_javascript_queues_and_comes_back(
    endpoint: FakeOpenAI, admin_user: User
) -> None:
    page = client_for(admin_user).post(reverse("endpoint_check"), {"model_name": "gpt-4o"})
    assert page.status_code == 302
    assert page["Location"] == f"{reverse('run_new')}?backend=openai&model_name=gpt-4o"
    assert EndpointProbe.objects.get().status == "queued"


@pytest.mark.django_db
def test_the_form_shows_a_check_at_work_and_a_failed_one(
    endpoint: FakeOpenAI, admin_user: User
) -> None:
    made = probe_create(enqueue=False)
    web = client_for(admin_user)
    assert made.claim()
    text = web.get(reverse("endpoint_status"), {"model_name": "gpt-4o"}).content.decode()
    assert f"Checking gpt-4o at {endpoint.base_url}… 0 of {STEPS} steps done" in text
    assert 'hx-trigger="change from:#id_model_name, every 1s"' in text
    # A check whose worker died is said so, and the note stops polling.
    long_ago = timezone.now() - timezone.timedelta(minutes=6)
    EndpointProbe.objects.filter(id=made.id).update(started_at=long_ago)
    text = web.get(reverse("endpoint_status"), {"model_name": "gpt-4o"}).content.decode()
    assert "stopped without an answer" in text and "every 1s" not in text
    EndpointProbe.objects.filter(id=made.id).update(status="queued", started_at=None)
    endpoint.api_key = "sk-other"
    probe_run(probe_id=made.id)
    text = web.get(reverse("run_new")).content.decode()
    assert "failed: the endpoint did not answer a plain question" in text
    assert "every 1s" not in text
    # Another model has no check yet.
    other = web.get(reverse("endpoint_status"), {"model_name": "gpt-4o-mini"}).content.decode()
    assert "gpt-4o-mini at" in other and "has not been checked" in other
