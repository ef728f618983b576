"""Rule-based scorers: ``score(response, answer) -> float`` in [0, 1], no network, no model.

``answer`` is a string, or a list of strings when every item is required (RULER-style).
Responses of thinking models are scored on the text after the last ``</think>``.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Callable, Sequence

Answer = str | Sequence[str]
Scorer = Callable[[str, Answer], float]

THINK_END = "</think>"
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# LongBench-v2's patterns first ("The correct answer is (B)"), then common looser forms.
_CHOICE_PATTERNS = (
    re.compile(r"The correct answer is \(([A-D])\)"),
    re.compile(r"The correct answer is ([A-D])\b"),
    re.compile(r"[Aa]nswer\s*(?:is)?\s*[:：]?\s*\(?([A-D])\)?(?![A-Za-z])"),
    re.compile(r"^\s*\(?([A-D])\)?\s*(?:[.:)]|$)"),
)


def final_answer(response: str) -> str:
    """The text after a thinking model's last ``</think>`` (the whole response otherwise)."""
    return response.rsplit(THINK_END, 1)[-1].strip()


def normalize(text: str) -> str:
    """SQuAD-style normalisation: NFKC, lower case, no punctuation, articles or extra spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _items(answer: Answer) -> list[str]:
    return [answer] if isinstance(answer, str) else [str(a) for a in answer]


def exact_match(response: str, answer: Answer) -> float:
    """1 if the normalised response equals the (any) normalised reference."""
    got = normalize(final_answer(response))
    return float(any(got == normalize(a) for a in _items(answer)))


def contains(response: str, answer: Answer) -> float:
    """1 if the normalised response contains the reference (any item of a list)."""
    got = normalize(final_answer(response))
    return float(any(normalize(a) and normalize(a) in got for a in _items(answer)))


def contains_all(response: str, answer: Answer) -> float:
    """Fraction of the reference items found in the response (RULER's recall metric)."""
    items = _items(answer)
    got = normalize(final_answer(response))
    return sum(normalize(a) in got for a in items) / len(items) if items else 0.0


def extract_choice(response: str) -> str | None:
    """The multiple-choice letter (A-D) a response commits to, or None; the last match wins."""
    text = final_answer(response).replace("*", "")
    for pattern in _CHOICE_PATTERNS:
        found = pattern.findall(text)
        if found:
            return found[-1]
    return None


def choice(response: str, answer: Answer) -> float:
    """LongBench-v2 scoring: the extracted letter equals the reference letter."""
    letter = extract_choice(response)
    refs = {a.strip().strip("()").upper() for a in _items(answer)}
    return float(letter is not None and letter in refs)


def parse_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def numeric(response: str, answer: Answer) -> float:
    """1 if the last number in the response equals the reference number (rel. tol. 1e-6)."""
    got = parse_number(final_answer(response))
    if got is None:
        return 0.0
    for ref in _items(answer):
        want = parse_number(ref)
        if want is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
            return 1.0
    return 0.0


SCORERS: dict[str, Scorer] = {
    "exact_match": exact_match,
    "contains": contains,
    "contains_all": contains_all,
    "choice": choice,
    "numeric": numeric,
}


def auto_method(answer: Answer) -> str:
    """A rule scorer that fits a reference answer's shape (used when nothing is configured)."""
    if not isinstance(answer, str):
        return "contains_all"
    if answer.strip().strip("()").upper() in ("A", "B", "C", "D"):
        return "choice"
    if _NUMBER.fullmatch(answer.strip()):
        return "numeric"
    return "contains"


def resolve_method(dataset_method: str, run_method: str, record: dict) -> str:
    """Explicit dataset choice > explicit run choice > the row's own field > :func:`auto_method`."""
    for method in (dataset_method, run_method, record.get("scoring")):
        if method and method != "auto":
            return method
    return auto_method(record["answer"])


# Not a rule: an LLM judge, configured in the settings' "judge" block (see judge.py).
JUDGE = "judge"
SCORING_METHODS = (*SCORERS, JUDGE, "auto")
