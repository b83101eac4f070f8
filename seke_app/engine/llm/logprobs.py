"""The model's own probability of each expression, read from token log-probabilities.

An OpenAI-compatible endpoint can return, for every token of a reply, its
log-probability and the ``top_logprobs`` most likely alternatives at that position.
In a structured answer the expression is a JSON string value; the distribution over
the alternatives at the *first token of that value* is the model's distribution
over how the expression starts, given everything it wrote before it (the evidence
and the AUs come first in SEKE's schema). Mapped onto the vocabulary it becomes the
sample's ``expression_probs``, which SV-UAMC counts as a soft vote.

What is read, and the rules this module defines
    Position: the reply's tokens are joined and scanned as JSON; the value is the
    string under the key path (``("expression",)`` for an answer, ``("answer",
    "expression")`` for a verification reply), never a key of the same name inside
    ``evidence`` or ``verdicts``. The token holding the value's first character is
    read; what that token holds before the value (the opening quote, ``":"``,
    spaces) is its *lead*, and an alternative counts only when it starts with the
    same lead (spaces aside): an alternative without the opening quote would not be
    a string value at all.

    Class of an alternative: its part after the lead, leading spaces removed, in
    lower case (the parser accepts "Happiness "), names every class it is a prefix
    of (``hap`` -> happiness), or the class it spells out whole when a closing
    quote follows (``sad"`` -> sad, not sadness). An alternative that names no
    class (a word outside the vocabulary, a bare quote) is not counted.

    Classes sharing a token: when an alternative names several classes (``s`` for
    sadness and surprise, ``sad`` for sad and sadness), the first token cannot tell
    them apart. If it is the token the reply went on with, the next token's
    alternatives are read the same way, restricted to those classes, and split the
    alternative's probability between them (``P(s) * P(ad | s)``), as deep as the
    classes stay shared. Otherwise nothing says how the model would have gone on,
    and its probability is split evenly between them: the least informative
    assignment. Such splits are reported (``ExpressionReading.split``): a
    vocabulary whose labels start alike is better renamed than read this way.

    No soft vote: ``probs`` is None (the sample stays one whole vote) when the
    reply has no token log-probabilities, the value cannot be found in the joined
    tokens, the alternatives that name a class hold less than
    ``MIN_MASS`` of the first token's probability (the top-N list then describes
    mostly something else, and renormalising would magnify what little is left),
    or the reply's own expression gets no probability (the reading would contradict
    the sample it belongs to).

    Otherwise ``probs`` is the named classes' probabilities renormalised over the
    vocabulary: the share of the model's probability that went to *some* class,
    divided among the classes. Renormalising is also what a strict JSON schema's
    constrained decoding does to the token distribution, so both kinds of endpoint
    read alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

# Below this share of the first token's probability naming a class, no soft vote.
MIN_MASS = 0.5

ANSWER_PATH: tuple[str, ...] = ("expression",)
VERIFICATION_PATH: tuple[str, ...] = ("answer", "expression")


@dataclass(frozen=True)
class TokenLogprob:
    """One token of a reply: its text, log-probability and the top alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ExpressionReading:
    """What the log-probabilities say about the expression of one reply.

    ``probs``: the soft vote over the classes, or None (``reason`` says why).
    ``mass``: the share of the value's first token's probability that named a class.
    ``split``: the groups of classes whose shared token was split evenly.
    """

    probs: dict[str, float] | None
    mass: float = 0.0
    reason: str | None = None
    split: tuple[tuple[str, ...], ...] = field(default_factory=tuple)


def read_expression(
    tokens: Sequence[TokenLogprob] | None,
    classes: Sequence[str],
    chosen: str,
    *,
    path: Sequence[str] = ANSWER_PATH,
    min_mass: float = MIN_MASS,
) -> ExpressionReading:
    """The soft vote of one reply whose parsed expression is ``chosen``."""
    if not tokens:
        return ExpressionReading(None, reason="the reply has no token log-probabilities")
    text = "".join(t.token for t in tokens)
    start = value_start(text, path)
    if start is None:
        return ExpressionReading(None, reason="the expression's value was not found")
    index, offset = _token_at(tokens, start)
    lead = tokens[index].token[: start - offset]
    names = tuple(c.lower() for c in classes)
    split: list[tuple[str, ...]] = []
    dist, mass = _distribution(tokens, index, "", lead, names, split)
    if mass < min_mass:
        return ExpressionReading(
            None, mass, f"only {mass:.2f} of the first token's probability names a class"
        )
    total = sum(dist.values())
    by_name = dict(zip(names, classes, strict=True))
    probs = {by_name[c]: dist.get(c, 0.0) / total for c in names}
    if probs.get(chosen, 0.0) <= 0.0:
        return ExpressionReading(
            None, mass, f"the reply's expression {chosen!r} has no probability"
        )
    return ExpressionReading(probs, mass, None, tuple(split))


def expression_probs(
    tokens: Sequence[TokenLogprob] | None,
    classes: Sequence[str],
    chosen: str,
    *,
    path: Sequence[str] = ANSWER_PATH,
) -> dict[str, float] | None:
    """``read_expression``'s soft vote alone."""
    return read_expression(tokens, classes, chosen, path=path).probs


def value_start(text: str, path: Sequence[str]) -> int | None:
    """The index of the first character of the string value under ``path`` in the
    JSON object that starts at the first ``{`` of ``text``; None when there is none."""
    i = text.find("{")
    if i < 0:
        return None
    # Per open container: whether it is an object, and the key being read in it.
    stack: list[tuple[bool, str | None]] = []
    expecting_key = False
    while i < len(text):
        char = text[i]
        if char == '"':
            end = _string_end(text, i)
            if end is None:
                return None
            if expecting_key and stack:
                stack[-1] = (True, _decoded(text[i : end + 1]))
                expecting_key = False
            i = end + 1
            continue
        if char in "{[":
            stack.append((char == "{", None))
            expecting_key = char == "{"
        elif char in "}]":
            stack.pop()
            if not stack:
                return None
        elif char == ",":
            expecting_key = bool(stack) and stack[-1][0]
        elif char == ":" and _at_path(stack, path):
            j = i + 1
            while j < len(text) and text[j] in " \t\r\n":
                j += 1
            return j + 1 if j < len(text) and text[j] == '"' else None
        i += 1
    return None


def _at_path(stack: list[tuple[bool, str | None]], path: Sequence[str]) -> bool:
    return len(stack) == len(path) and all(
        is_object and key == name for (is_object, key), name in zip(stack, path, strict=True)
    )


def _string_end(text: str, start: int) -> int | None:
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return None


def _decoded(raw: str) -> str | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _token_at(tokens: Sequence[TokenLogprob], position: int) -> tuple[int, int]:
    """The index of the token holding character ``position`` of the joined text, and
    that token's offset."""
    offset = 0
    for index, entry in enumerate(tokens):
        if offset <= position < offset + len(entry.token):
            return index, offset
        offset += len(entry.token)
    raise ValueError("position past the end of the tokens")


def _alternatives(entry: TokenLogprob) -> dict[str, float]:
    """Probability of each distinct alternative text, the chosen token included even
    when a sampled token fell outside the top N."""
    alternatives: dict[str, float] = {}
    for token, logprob in entry.top:
        alternatives[token] = alternatives.get(token, 0.0) + math.exp(logprob)
    if entry.token not in alternatives:
        alternatives[entry.token] = math.exp(entry.logprob)
    return alternatives


def _value_part(alternative: str, lead: str) -> str | None:
    """What ``alternative`` puts into the value after the lead, or None when it does
    not start the way the chosen token did (a different structure, not a class)."""
    if alternative.startswith(lead):
        return alternative[len(lead) :]
    core = "".join(lead.split())
    bare = alternative.lstrip()
    if core and bare.startswith(core):
        return bare[len(core) :]
    return None


def _names(value: str, classes: Sequence[str]) -> list[str]:
    """The classes ``value`` (the value's text so far, lower case) is consistent with."""
    return [
        name
        for name in classes
        if name.startswith(value)
        or (value.startswith(name) and value[len(name) :].lstrip().startswith('"'))
    ]


def _distribution(
    tokens: Sequence[TokenLogprob],
    index: int,
    prefix: str,
    lead: str,
    classes: Sequence[str],
    split: list[tuple[str, ...]],
) -> tuple[dict[str, float], float]:
    """Each class's probability at token ``index`` of the value (unnormalised), and
    the probability of the alternatives that named a class."""
    entry = tokens[index]
    dist: dict[str, float] = {}
    found = 0.0
    for alternative, p in _alternatives(entry).items():
        part = _value_part(alternative, lead)
        if part is None:
            continue
        value = (prefix + part).lstrip().lower()
        matching = _names(value, classes) if value else []
        if not matching:
            continue
        found += p
        shares = {matching[0]: 1.0} if len(matching) == 1 else None
        if shares is None and alternative == entry.token and index + 1 < len(tokens):
            deeper, deeper_found = _distribution(tokens, index + 1, value, "", matching, split)
            if deeper_found > 0:
                shares = {c: q / sum(deeper.values()) for c, q in deeper.items()}
        if shares is None:
            split.append(tuple(matching))
            shares = {c: 1.0 / len(matching) for c in matching}
        for name, share in shares.items():
            dist[name] = dist.get(name, 0.0) + p * share
    return dist, found
