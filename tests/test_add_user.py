"""``manage.py add_user``: without a terminal, and with passwords the validators refuse."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError

from seke_app.roles import user_create

pytestmark = pytest.mark.django_db

GOOD = "violet orbit lantern 42"


class FakeStdin(io.StringIO):
    """Standard input that is, or is not, a terminal."""

    def __init__(self, text: str = "", *, terminal: bool = False) -> None:
        super().__init__(text)
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


def no_terminal_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    """getpass without a terminal reads standard input and raises EOFError at its end."""

    def getpass(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr("getpass.getpass", getpass)


def add_user(*args: str) -> str:
    out = io.StringIO()
    call_command("add_user", *args, stdout=out)
    return out.getvalue()


def test_it_says_how_to_pass_a_password_without_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SEKE_NEW_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin", FakeStdin(""))
    no_terminal_prompt(monkeypatch)
    with pytest.raises(CommandError, match="--password-stdin"):
        add_user("zoe", "--role", "annotator")
    assert not User.objects.filter(username="zoe").exists()


def test_it_reads_the_password_from_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", FakeStdin(GOOD + "\nignored\n"))
    assert "created annotator zoe" in add_user("zoe", "--role", "annotator", "--password-stdin")
    assert User.objects.get(username="zoe").check_password(GOOD)


def test_it_refuses_an_empty_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", FakeStdin(""))
    with pytest.raises(CommandError, match="standard input was empty"):
        add_user("zoe", "--role", "annotator", "--password-stdin")
    assert not User.objects.filter(username="zoe").exists()


def test_it_reads_the_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEKE_NEW_PASSWORD", GOOD)
    monkeypatch.setattr("sys.stdin", FakeStdin(""))
    add_user("max", "--role", "admin")
    assert User.objects.get(username="max").check_password(GOOD)


def test_it_asks_twice_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEKE_NEW_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin", FakeStdin(terminal=True))
    answers = iter([GOOD, GOOD + "!"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    with pytest.raises(CommandError, match="the two passwords differ"):
        add_user("zoe", "--role", "annotator")
    answers = iter([GOOD, GOOD])
    add_user("zoe", "--role", "annotator")
    assert User.objects.get(username="zoe").check_password(GOOD)


def test_it_turns_the_end_of_input_at_the_prompt_into_a_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SEKE_NEW_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin", FakeStdin(terminal=True))
    no_terminal_prompt(monkeypatch)
    with pytest.raises(CommandError, match="no password was entered"):
        add_user("zoe", "--role", "annotator")


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short", "This password is too short. It must contain at least 8 characters."),
        ("password", "This password is too common."),
        ("4815162342", "This password is entirely numeric."),
        ("zoe.kowalski", "The password is too similar to the username."),
    ],
)
def test_it_refuses_a_password_the_validators_reject(password: str, reason: str) -> None:
    with pytest.raises(CommandError, match="password refused") as refused:
        add_user("zoe.kowalski", "--role", "annotator", "--password", password)
    assert reason in str(refused.value)
    assert not User.objects.filter(username="zoe.kowalski").exists()


def test_it_runs_the_validators_when_creating_a_user_in_a_service() -> None:
    with pytest.raises(ValueError, match="too short"):
        user_create(username="zoe", password="short", role="annotator")
    assert user_create(username="zoe", password=GOOD, role="annotator").check_password(GOOD)
