"""lm-evaluation-harness: the ``swaa`` model, its model args, the shipped offline task, and
per-sample agreement of lm-eval's CLI with ``swaa eval`` on the demo model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.registry import get_model  # noqa: E402

from swaa_patch import SWAACache, SWAAConfig, apply_swaa  # noqa: E402
from swaa_patch.data.synthetic import generate_task, tokenizer_counter  # noqa: E402
from swaa_patch.evaluation.runner import run_eval  # noqa: E402
from swaa_patch.evaluation.settings import parse_settings  # noqa: E402
from swaa_patch.jobs.io import read_jsonl  # noqa: E402
from swaa_patch.jobs.loading import load_tokenizer  # noqa: E402
from swaa_patch.jobs.prompts import prompt_ids  # noqa: E402
from swaa_patch.lm_eval import SWAALM  # noqa: E402
from swaa_patch.lm_eval.model_args import swaa_config_from_args  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "model"
TASK_DIR = REPO / "eval" / "lm_eval"
DATA = TASK_DIR / "swaa_demo" / "data"
TASKS = ("passkey", "multikey_niah", "kv_lookup", "variable_tracking")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# The calibrated set: layers 0, 2, 3, 4 bounded to 4 sinks + 63 keys, so generation must run on SWAACache to agree.
BOUNDED = {"sliding_window_size": 64, "keep_first": 4, "force_fa_decode": False, "non_sliding_layers": [1, 5, 6, 7]}
LIMIT = 2  # samples per task


# -- model args -------------------------------------------------------------------------------
def test_model_args_build_the_config_with_layer_lists_separated_by_semicolons():
    config = swaa_config_from_args(
        {"sliding_window_size": 64, "keep_first": 4, "force_fa_decode": "0;2", "non_sliding_layers": "1;3"}
    )
    assert config == SWAAConfig(sliding_window_size=64, keep_first=4, force_fa_decode=[0, 2], non_sliding_layers=[1, 3])
    assert swaa_config_from_args({"sliding_window_size": 8, "non_sliding_layers": 1}).non_sliding_layers == (1,)
    assert swaa_config_from_args({"sliding_window_size": 8, "force_fa_decode": True}).force_fa_decode is True
    assert swaa_config_from_args({}) is None
    assert not swaa_config_from_args({"sliding_window_size": None}).enabled


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"keep_first": 4}, r"model_args.sliding_window_size: required when \['keep_first'\] are given"),
        ({"sliding_window_size": 64, "keep_first": -1}, r"model_args.keep_first: must be an integer >= 0, got -1"),
        ({"sliding_window_size": 0}, r"model_args.sliding_window_size: must be None or an integer >= 1, got 0"),
        ({"sliding_window_size": 64, "non_sliding_layers": "1,x"}, r"model_args.non_sliding_layers: layer indices"),
    ],
)
def test_bad_model_args_name_the_field_and_the_allowed_range(args, message):
    with pytest.raises(ValueError, match=message):
        swaa_config_from_args(args)


def test_swaa_is_registered_with_lm_eval():
    assert get_model("swaa") is SWAALM


def test_layer_indices_beyond_the_model_are_refused_at_load():
    with pytest.raises(ValueError, match=r"non_sliding_layers: layer indices must be in \[0, 7\]"):
        SWAALM(pretrained=str(DEMO), sliding_window_size=64, non_sliding_layers="9", device="cpu")


def test_without_swaa_args_a_checkpoints_own_swaa_config_applies(tmp_path):
    from transformers import AutoModelForCausalLM

    saved = SWAAConfig(sliding_window_size=64, keep_first=4)
    model = apply_swaa(AutoModelForCausalLM.from_pretrained(DEMO), saved)
    model.save_pretrained(tmp_path)
    load_tokenizer(str(DEMO)).save_pretrained(tmp_path)
    assert SWAALM(pretrained=str(tmp_path), device="cpu").swaa_config == saved
    assert SWAALM(pretrained=str(tmp_path), device="cpu", sliding_window_size=None).swaa_config is None


# -- loglikelihood: scored as generated --------------------------------------------------------
def decoded_logprob(model, context: list[int], continuation: list[int]) -> float:
    """The continuation's log-probability as generation computes it: prefill the context, then
    feed the continuation one decode step at a time on the cache."""
    from swaa_patch.compat import cache_kwargs, output_cache

    with torch.no_grad():
        out = model(torch.tensor([context]), use_cache=True)
        total, cache = 0.0, output_cache(out)
        logits = out.logits[0, -1]
        for token in continuation:
            total += float(torch.log_softmax(logits.double(), -1)[token])
            out = model(torch.tensor([[token]]), use_cache=True, **cache_kwargs(model, cache))
            cache, logits = output_cache(out), out.logits[0, -1]
    return total


@pytest.fixture(scope="module")
def demo_prompt() -> tuple[list[int], list[int]]:
    record = json.loads((DATA / "passkey.jsonl").read_text().splitlines()[0])
    tokenizer = load_tokenizer(str(DEMO))
    context = prompt_ids(tokenizer, record["prompt"], chat_template=True)
    continuation = tokenizer(f"The answer is {record['answer']}.", add_special_tokens=False)["input_ids"]
    return context, continuation


@pytest.mark.parametrize("force_fa_decode", [True, False])
def test_loglikelihood_equals_the_decoded_continuation(demo_prompt, force_fa_decode):
    context, continuation = demo_prompt
    lm = SWAALM(pretrained=str(DEMO), sliding_window_size=64, keep_first=4, force_fa_decode=force_fa_decode,
                device="cpu", dtype="float32")
    [(logprob, _)] = lm._loglikelihood_tokens([(None, context, continuation)], disable_tqdm=True)
    expected = decoded_logprob(lm.model, context, continuation)
    assert abs(logprob - expected) <= 1e-3 * max(1.0, abs(expected))
    # a plain forward applies the sliding rule to the answer too: with force_fa_decode that is another model
    with torch.no_grad():
        plain = torch.log_softmax(lm.model(torch.tensor([context + continuation[:-1]])).logits[0].double(), -1)
    plain_logprob = float(plain[-len(continuation):].gather(1, torch.tensor(continuation)[:, None]).sum())
    assert (abs(plain_logprob - expected) > 0.1) == force_fa_decode


# -- the Python API and the CLI on the shipped task ----------------------------------------------
def test_python_api_generates_on_the_bounded_cache(monkeypatch):
    seen: list[SWAACache] = []
    begin = SWAACache.begin_forward

    def spy(self, *args, **kwargs):
        seen.append(self)
        return begin(self, *args, **kwargs)

    monkeypatch.setattr(SWAACache, "begin_forward", spy)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    results = lm_eval.simple_evaluate(
        model="swaa", model_args={"pretrained": str(DEMO), "dtype": "float32", **BOUNDED}, device="cpu",
        tasks=["swaa_demo_passkey", "swaa_demo_ll"], limit=1, apply_chat_template=True, batch_size=1,
        task_manager=lm_eval.tasks.TaskManager(include_path=str(TASK_DIR)),
    )
    assert set(results["results"]) == {"swaa_demo_passkey", "swaa_demo_ll"}
    assert seen and all(cache.bounded_layers == {0, 2, 3, 4} for cache in seen)  # BOUNDED keeps 1, 5, 6, 7 full
    assert seen[-1].layers[0].keys.shape[-2] == 4 + 64 - 1


def lm_eval_responses(out_dir: Path) -> dict[str, tuple[str, float]]:
    rows = {}
    for path in out_dir.rglob("samples_swaa_demo_*.jsonl"):
        for row in read_jsonl(path):
            rows[row["doc"]["id"]] = (row["filtered_resps"][0], row["acc"])
    return rows


def swaa_eval_responses(out_dir: Path) -> dict[str, tuple[str, float]]:
    settings = parse_settings({
        "output_dir": str(out_dir), "datasets": [str(DATA / f"{t}.jsonl") for t in TASKS], "limit": LIMIT,
        "max_new_tokens": 16, "batch_size": 1, "dtype": "float32", "device": "cpu", "chat_template": True,
        "settings": [{"swaa_config": BOUNDED, "model_list": [str(DEMO)]}],
    })
    run_eval(settings)
    return {r["id"]: (r["response"], r["score"]) for path in out_dir.rglob("*.rank0.jsonl") for r in read_jsonl(path)}


def test_lm_eval_cli_answers_equal_swaa_eval(tmp_path):
    """The CI test: lm-eval's own command line (through ``python -m swaa_patch.lm_eval``) on the demo
    model gives, sample by sample, the answers and scores of ``swaa eval`` with the same config."""
    model_args = f"pretrained={DEMO},dtype=float32,sliding_window_size=64,keep_first=4,non_sliding_layers=1;5;6;7"
    command = [sys.executable, "-m", "swaa_patch.lm_eval", "run", "--model", "swaa", "--model_args", model_args,
               "--device", "cpu", "--batch_size", "1", "--tasks", "swaa_demo", "--include_path", str(TASK_DIR),
               "--apply_chat_template", "--limit", str(LIMIT), "--log_samples", "--output_path", str(tmp_path / "lm")]
    done = subprocess.run(command, cwd=tmp_path, env={**os.environ, **OFFLINE}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = lm_eval_responses(tmp_path / "lm")
    theirs = swaa_eval_responses(tmp_path / "swaa")
    assert len(ours) == len(TASKS) * LIMIT
    assert ours == theirs


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the shipped samples were generated with Python 3.11")
def test_shipped_task_data_is_what_swaa_eval_generates_for_the_demo():
    settings = json.loads((REPO / "settings" / "demo.json").read_text())
    spec = settings["datasets"][0]
    assert spec["task"] == "passkey"
    rows = generate_task("passkey", tokenizer_counter(load_tokenizer(str(DEMO))), spec["lengths"], spec["depths"],
                         spec["samples"], settings["seed"])
    assert read_jsonl(DATA / "passkey.jsonl") == rows
