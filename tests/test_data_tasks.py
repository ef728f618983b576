"""Synthetic task generators, the stdlib haystack, and dataset loaders."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swaa_patch.data.haystack import load_paragraphs
from swaa_patch.data.loaders import load_records, missing_fields
from swaa_patch.data.synthetic import (
    LENGTH_TOLERANCE,
    generate_task,
    insert_needles,
    make_sample,
    tokenizer_counter,
)
from swaa_patch.data.tasks import TASKS, Needle
from swaa_patch.jobs.builtin_models import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def count():
    return tokenizer_counter(build_tiny_tokenizer())


def test_haystack_is_real_deduplicated_text():
    corpus = load_paragraphs()
    assert len(corpus) > 1000
    assert len(set(corpus)) == len(corpus)
    assert sum(map(len, corpus)) > 300_000  # ~100K tokens before any wrap-around
    assert all(len(p) >= 80 and ">>>" not in p for p in corpus)


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("length", [600, 3000])
def test_prompt_hits_token_length(count, task, length):
    sample = make_sample(task, length, 0.5, seed=3, index=0, count_tokens=count)
    measured = count(sample["prompt"])
    assert measured == sample["prompt_tokens"]
    assert abs(measured - length) <= LENGTH_TOLERANCE * length, (task, measured)


def test_hits_length_for_a_second_tokenizer_family():
    # A word-level view (whitespace words) stands in for a very different tokenizer.
    words = lambda text: len(text.split())  # noqa: E731
    for task in ("passkey", "kv_lookup"):
        sample = make_sample(task, 1500, 0.3, seed=0, index=0, count_tokens=words)
        assert abs(words(sample["prompt"]) - 1500) <= 30


@pytest.mark.parametrize("task", sorted(TASKS))
def test_evidence_is_in_prompt_and_answer_well_formed(count, task):
    sample = make_sample(task, 800, 0.5, seed=1, index=2, count_tokens=count)
    items = sample["answer"] if isinstance(sample["answer"], list) else [sample["answer"]]
    if task != "depth_qa":  # the multiple-choice answer is a letter, not a string in the text
        assert all(item in sample["prompt"] for item in items)
    assert sample["question"] in sample["prompt"]
    assert sample["scoring"] == TASKS[task].scoring


def test_no_paragraph_repeats_within_a_sample(count):
    sample = make_sample("passkey", 4000, 0.5, seed=0, index=0, count_tokens=count)
    paragraphs = [p for p in sample["prompt"].split("\n\n") if len(p) > 80]
    assert len(paragraphs) == len(set(paragraphs)) > 10


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_depth_controls_evidence_position(count, depth):
    sample = make_sample("passkey", 2000, depth, seed=5, index=0, count_tokens=count)
    prompt = sample["prompt"]
    start = prompt.index("\n\n") + 2
    end = prompt.rindex("\n\nQuestion:")
    where = prompt.index("The pass key is") - start
    assert abs(where / (end - start) - depth) < 0.05


def test_insert_needles_on_sentence_boundaries():
    text = "One two. Three four. Five six."
    out = insert_needles(text, [Needle("X.", 0.0), Needle("Y.", 0.5), Needle("Z.", 1.0)])
    assert out == "X. One two. Y. Three four. Five six. Z."


def test_same_seed_same_data_other_seed_other_data(count):
    a = generate_task("multikey_niah", count, [300], [0.2, 0.8], 2, seed=11)
    b = generate_task("multikey_niah", count, [300], [0.2, 0.8], 2, seed=11)
    c = generate_task("multikey_niah", count, [300], [0.2, 0.8], 2, seed=12)
    assert a == b
    assert [s["prompt"] for s in a] != [s["prompt"] for s in c]
    assert len({s["id"] for s in a}) == 4


_HASH_SCRIPT = """
import hashlib, json, sys, types
# Load the data modules without swaa_patch/__init__ (which imports torch): fast subprocesses.
package = types.ModuleType("swaa_patch")
package.__path__ = [sys.argv[1]]
sys.modules["swaa_patch"] = package
from swaa_patch.data.synthetic import generate_task
from swaa_patch.data.tasks import TASKS
words = lambda t: len(t.split())
rows = [generate_task(t, words, [200], [0.5], 1, seed=4) for t in sorted(TASKS)]
print(hashlib.sha256(json.dumps(rows).encode()).hexdigest())
"""


def test_deterministic_across_processes_and_hash_seeds():
    """Regression: set iteration order (PYTHONHASHSEED) once leaked into variable names."""
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HASH_SCRIPT, str(REPO / "swaa_patch")],
            env={**env, "PYTHONHASHSEED": seed},
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in ("1", "2")
    ]
    digests = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert len(digests) == 1 and all(len(d) == 64 for d in digests)


def test_too_short_length_is_reported(count):
    with pytest.raises(ValueError, match="kv_lookup.*too short"):
        make_sample("kv_lookup", 40, 0.5, seed=0, index=0, count_tokens=count)


def test_shipped_samples_are_loadable():
    folder = REPO / "datasets" / "synthetic"
    for task in TASKS:
        records = load_records(folder / f"{task}.jsonl")
        assert records and all(r["task"] == task for r in records)
        assert hashlib.sha256(records[0]["prompt"].encode()).hexdigest()  # non-empty text


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".json"])
def test_loaders_read_each_format(tmp_path, suffix):
    rows = [
        {"prompt": "P1", "question": "Q1", "answer": "A1", "question_type": "x"},
        {"prompt": "P2", "question": "Q2", "answer": "A2", "question_type": "y"},
    ]
    path = _write(tmp_path / f"d{suffix}", rows)
    records = load_records(path)
    assert [r["prompt"] for r in records] == ["P1", "P2"]
    assert [r["id"] for r in records] == ["0", "1"]
    assert records[1]["question_type"] == "y"


def test_loader_context_question_fallback(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"context": "C", "question": "Q?", "answer": ["a", "b"], "id": 7}])
    (record,) = load_records(path)
    assert record["prompt"] == "Context: C\n\nQuestion: Q?"
    assert record["answer"] == ["a", "b"] and record["id"] == "7"


def test_loader_errors(tmp_path):
    assert missing_fields({"prompt"}) == ["answer"]
    assert missing_fields({"answer", "context"}) == ["prompt (or context + question)"]
    path = _write(
        tmp_path / "d.jsonl",
        [{"prompt": "p", "answer": "a", "id": 1}, {"prompt": "q", "answer": "b", "id": 1}],
    )
    with pytest.raises(ValueError, match="duplicate sample id"):
        load_records(path)
    with pytest.raises(ValueError, match="unsupported dataset format"):
        load_records(tmp_path / "d.csv")
