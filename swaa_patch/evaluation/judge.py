"""LLM-as-judge scoring behind a one-method interface; off unless a settings file configures it.

:class:`Judge` is anything callable as ``judge(question, answer, response) -> float``.
:class:`OpenAICompatibleJudge` posts to any OpenAI-compatible ``/chat/completions`` endpoint
(OpenAI, Azure-style gateways, a local vLLM server) with :mod:`urllib`: no extra dependency.
Tests use a fake judge or a fake ``opener``; nothing here runs unless ``scoring: "judge"``.
:func:`score_response` scores one response with a rule scorer or the judge (eval and distill).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol

from .scoring import JUDGE, SCORERS, Answer, final_answer
from .settings import JudgeSettings, parse_api_key_env, parse_judge_url

logger = logging.getLogger(__name__)

JUDGE_PROMPT = """You grade answers. Label the generated answer to the question as CORRECT or WRONG.
Be generous with wording and format (a longer answer, a different date format or a paraphrase is fine)
as long as it states the same key fact as the gold answer; a vague or different answer is WRONG.
If the gold answer lists alternatives separated by "or", matching any one of them is CORRECT.

Question: {question}
Gold answer: {gold}
Generated answer: {response}

Give a one-sentence reason, then end with the single word CORRECT or WRONG."""

_VERDICT = re.compile(r"\b(CORRECT|INCORRECT|WRONG)\b", re.IGNORECASE)


class Judge(Protocol):
    def __call__(self, question: str, answer: Answer, response: str) -> float: ...


def parse_verdict(text: str) -> float:
    """1.0 if the judge's last verdict word is CORRECT, else 0.0 (no verdict counts as wrong)."""
    found = _VERDICT.findall(text)
    return float(bool(found) and found[-1].upper() == "CORRECT")


class OpenAICompatibleJudge:
    """Judge through an OpenAI-compatible chat endpoint, with retries and back-off."""

    def __init__(self, settings: JudgeSettings, opener: Callable[..., Any] = urllib.request.urlopen):
        self.settings = settings
        self.opener = opener

    def build_request(self, question: str, answer: Answer, response: str) -> urllib.request.Request:
        gold = answer if isinstance(answer, str) else "; ".join(answer)
        content = JUDGE_PROMPT.format(question=question, gold=gold, response=final_answer(response))
        body = {"model": self.settings.model, "messages": [{"role": "user", "content": content}], "temperature": 0}
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.settings.api_key_env) if self.settings.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = self.settings.base_url.rstrip("/") + "/chat/completions"
        return urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")

    def __call__(self, question: str, answer: Answer, response: str) -> float:
        if not final_answer(response):
            return 0.0
        request = self.build_request(question, answer, response)
        for attempt in range(self.settings.max_retries + 1):
            try:
                with self.opener(request, timeout=self.settings.timeout_s) as reply:
                    payload = json.loads(reply.read().decode("utf-8"))
                return parse_verdict(payload["choices"][0]["message"]["content"])
            except (urllib.error.URLError, TimeoutError, KeyError, IndexError, json.JSONDecodeError) as err:
                if attempt == self.settings.max_retries:
                    raise RuntimeError(f"judge at {request.full_url} failed {attempt + 1} times: {err}") from err
                logger.warning("judge call failed (%s); retry %d", err, attempt + 1)
                time.sleep(min(2**attempt, 30))
        raise AssertionError("unreachable")


def make_judge(settings: JudgeSettings | None) -> Judge | None:
    """The configured judge; its URL and key variable are checked again, however the settings were made."""
    if settings is None:
        return None
    parse_judge_url(settings.base_url, "judge.base_url")
    parse_api_key_env(settings.api_key_env, "judge.api_key_env")
    return OpenAICompatibleJudge(settings)


def score_response(method: str, record: dict[str, Any], response: str, judge: Judge | None) -> float:
    """The score of ``response`` against the record's answer with scorer ``method`` (or the judge)."""
    if method == JUDGE:
        if judge is None:
            raise RuntimeError("scoring 'judge' needs a 'judge' block in the settings")
        return judge(record.get("question", ""), record["answer"], response)
    if method not in SCORERS:
        raise ValueError(f"sample {record['id']}: unknown scoring {method!r}; use one of {sorted(SCORERS)}")
    return SCORERS[method](response, record["answer"])
