"""Scorers and the judge interface on hand-written cases (no model, no network)."""

from __future__ import annotations

import io
import json

import pytest

from swaa_patch.evaluation.judge import OpenAICompatibleJudge, parse_verdict
from swaa_patch.evaluation.scoring import (
    SCORERS,
    auto_method,
    choice,
    contains,
    contains_all,
    exact_match,
    extract_choice,
    final_answer,
    numeric,
    resolve_method,
)
from swaa_patch.evaluation.settings import JudgeSettings


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        ("Paris", "Paris", 1.0),
        ("  the Paris. ", "paris", 1.0),  # articles, case, punctuation, spaces
        ("Paris, France", "Paris", 0.0),
        ("London", ["Paris", "London"], 1.0),  # any reference counts
        ("<think>maybe Rome</think>Paris", "Paris", 1.0),
    ],
)
def test_exact_match(response, answer, expected):
    assert exact_match(response, answer) == expected


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        ("I think it is in the Garden Shed, clearly.", "garden shed", 1.0),
        ("It is in the attic.", "garden shed", 0.0),
        ("<think>garden shed?</think>The attic.", "garden shed", 0.0),  # reasoning is not the answer
        ("", "x", 0.0),
    ],
)
def test_contains(response, answer, expected):
    assert contains(response, answer) == expected


def test_contains_all_is_recall_over_items():
    answer = ["1234567", "7654321", "1111111", "2222222"]
    assert contains_all("1234567, 7654321, 1111111 and 2222222", answer) == 1.0
    assert contains_all("1234567 and 2222222", answer) == 0.5
    assert contains_all("none", answer) == 0.0
    assert contains_all("VAR ABCDE and VAR FGHIJ", ["ABCDE", "FGHIJ"]) == 1.0


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("The correct answer is (B)", "B"),
        ("Reasoning... **The correct answer is (C)**.", "C"),  # LongBench-v2 strips '*'
        ("The correct answer is D", "D"),
        ("First I thought The correct answer is (A), but The correct answer is (C)", "C"),  # last wins
        ("Answer: B", "B"),
        ("(A)", "A"),
        ("B. because it says so", "B"),
        ("A cat sat on the mat.", None),  # the article 'A' is not a choice
        ("I do not know", None),
        ("<think>The correct answer is (A)</think>The correct answer is (D)", "D"),
    ],
)
def test_extract_choice(response, letter):
    assert extract_choice(response) == letter


def test_choice_scores_letter_against_reference():
    assert choice("The correct answer is (B)", "B") == 1.0
    assert choice("The correct answer is (B)", "(b)") == 1.0
    assert choice("The correct answer is (A)", "B") == 0.0
    assert choice("no idea", "B") == 0.0


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        ("The pass key is 482913.", "482913", 1.0),
        ("482,913", "482913", 1.0),  # thousands separators
        ("It is 3.50", "3.5", 1.0),
        ("Either 12 or 13, I pick 13", "13", 1.0),  # the last number is the answer
        ("13 or maybe 12", "13", 0.0),
        ("no number", "7", 0.0),
        ("-4", "-4", 1.0),
    ],
)
def test_numeric(response, answer, expected):
    assert numeric(response, answer) == expected


def test_final_answer_strips_thinking():
    assert final_answer("<think>a\nb</think>\n  42 ") == "42"
    assert final_answer("no tags") == "no tags"


def test_every_scorer_returns_a_probability():
    for scorer in SCORERS.values():
        assert 0.0 <= scorer("some answer 12", "12") <= 1.0
        assert 0.0 <= scorer("", ["a", "b"]) <= 1.0


def test_auto_and_resolved_methods():
    assert auto_method(["a", "b"]) == "contains_all"
    assert auto_method("C") == "choice"
    assert auto_method("123456") == "numeric"
    assert auto_method("garden shed") == "contains"
    record = {"answer": "12", "scoring": "exact_match"}
    assert resolve_method("auto", "auto", record) == "exact_match"  # row field
    assert resolve_method("auto", "contains", record) == "contains"  # run overrides row
    assert resolve_method("numeric", "contains", record) == "numeric"  # dataset overrides run
    assert resolve_method("auto", "auto", {"answer": "12"}) == "numeric"


def test_parse_verdict():
    assert parse_verdict("Same city. CORRECT") == 1.0
    assert parse_verdict("Different year. WRONG") == 0.0
    assert parse_verdict("This is INCORRECT") == 0.0
    assert parse_verdict("I cannot tell") == 0.0
    assert parse_verdict("Looked CORRECT at first, but it is WRONG") == 0.0


class _Reply(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_openai_judge_builds_request_and_parses_reply(monkeypatch):
    monkeypatch.setenv("SWAA_TEST_KEY", "sk-test")
    seen = {}

    def opener(request, timeout):
        seen["url"], seen["timeout"] = request.full_url, timeout
        seen["headers"] = dict(request.header_items())
        seen["body"] = json.loads(request.data)
        content = "The answer names the same place. CORRECT"
        return _Reply(json.dumps({"choices": [{"message": {"content": content}}]}).encode())

    settings = JudgeSettings(
        base_url="http://judge.invalid/v1/", model="m", api_key_env="SWAA_TEST_KEY", timeout_s=5
    )
    judge = OpenAICompatibleJudge(settings, opener=opener)
    assert judge("Where?", "garden shed", "<think>hmm</think>In the shed.") == 1.0
    assert seen["url"] == "http://judge.invalid/v1/chat/completions"
    assert seen["timeout"] == 5
    assert seen["headers"]["Authorization"] == "Bearer sk-test"
    prompt = seen["body"]["messages"][0]["content"]
    assert "Gold answer: garden shed" in prompt and "In the shed." in prompt and "hmm" not in prompt
    assert seen["body"]["model"] == "m"


def test_openai_judge_gives_up_after_retries(monkeypatch):
    import urllib.error

    calls = []

    def opener(request, timeout):
        calls.append(1)
        raise urllib.error.URLError("down")

    monkeypatch.setattr("swaa_patch.evaluation.judge.time.sleep", lambda s: None)
    judge = OpenAICompatibleJudge(
        JudgeSettings(base_url="http://x.invalid", model="m", max_retries=2), opener=opener
    )
    with pytest.raises(RuntimeError, match="failed 3 times"):
        judge("q", "a", "r")
    assert len(calls) == 3
    assert judge("q", "a", "<think>only thoughts</think>") == 0.0  # empty answer: no call
    assert len(calls) == 3
