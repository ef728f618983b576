"""transformers compatibility: the cache under whichever name the installed release takes, a loud
error (never a quiet wrong result) when transformers does something SWAA did not plan for, the
declared version range, and labels of non-causal-LM heads left alone."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
import transformers
from reference import rel_error
from tiny import COMMON, VOCAB, tiny_model
from transformers import Qwen3Config, Qwen3ForSequenceClassification, Qwen3ForTokenClassification

from swaa_patch import SWAAConfig, apply_swaa, compat, patch
from swaa_patch.compat import (
    CACHE_ARG_NAMES,
    TransformersMismatch,
    cache_arg_name,
    cache_kwargs,
    output_cache,
)

REPO = Path(__file__).resolve().parents[1]


def test_cache_argument_is_read_from_the_installed_release():
    model = tiny_model("qwen3")
    name = cache_arg_name(type(model))
    expected = "cache" if compat.installed_version().release >= (5, 24) else "past_key_values"
    assert name == expected
    assert cache_kwargs(model, None) == {expected: None}


@pytest.mark.parametrize("given", CACHE_ARG_NAMES)
def test_manual_decode_loop_with_either_cache_name(given):
    """`model(x, cache=out.cache)` on 5.24 and `past_key_values=` on 5.17 both work, and so does
    the other release's name: SWAA moves it to the one the model reads (5.17 would ignore `cache=`)."""
    ids = torch.randint(3, VOCAB, (2, 12))
    stock = tiny_model("qwen3")
    with torch.no_grad():
        expected = stock(ids).logits[:, -1]
        model = apply_swaa(tiny_model("qwen3"), SWAAConfig(sliding_window_size=100_000, keep_first=2))
        first = model(ids[:, :8], use_cache=True)
        out = first
        for t in range(8, 12):
            out = model(ids[:, t : t + 1], use_cache=True, **{given: output_cache(out)})
    assert rel_error(out.logits[:, -1], expected) < 1e-5


def test_both_cache_names_at_once_are_refused():
    model = apply_swaa(tiny_model("qwen3"), SWAAConfig(sliding_window_size=4))
    with torch.no_grad():
        cache = output_cache(model(torch.randint(3, VOCAB, (1, 6)), use_cache=True))
        with pytest.raises(ValueError, match="pass the cache once"):
            model(torch.randint(3, VOCAB, (1, 1)), cache=cache, past_key_values=cache)


def test_a_cache_name_swaa_does_not_know_raises_naming_the_version(monkeypatch):
    """A release whose forward takes its cache under a new name: any SWAA forward refuses."""
    model = apply_swaa(tiny_model("qwen3"), SWAAConfig(sliding_window_size=4))
    monkeypatch.setattr(compat, "CACHE_ARG_NAMES", ("kv_state",))
    message = re.escape(f"installed transformers {transformers.__version__}")
    with pytest.raises(TransformersMismatch, match=rf"takes none of \['kv_state'\].*{message}"):
        model(torch.randint(3, VOCAB, (1, 6)))


@pytest.mark.parametrize("attn", ["eager", "sdpa", "flex_attention"])
def test_a_cache_the_hook_did_not_see_raises_instead_of_a_wrong_result(monkeypatch, attn):
    """The 5.24 failure mode: the hook looks for the cache under a name the model does not read,
    so it plans a decode step as if nothing were cached. Attention then gets more keys than the
    plan accounted for and SWAA raises (it used to return logits 0.2 away from stock)."""
    model = apply_swaa(tiny_model("qwen3", attn), SWAAConfig(sliding_window_size=100_000))
    real = cache_arg_name(type(model))
    monkeypatch.setattr(compat, "CACHE_ARG_NAMES", ("kv_state",))
    monkeypatch.setattr(patch, "_cache_arg", lambda model: "kv_state")
    ids = torch.randint(3, VOCAB, (1, 9))
    message = re.escape(f"installed transformers {transformers.__version__}")
    with torch.no_grad():
        out = model(ids[:, :8], use_cache=True)
        with pytest.raises(TransformersMismatch, match=rf"planned this forward for 1 keys.*received 9.*{message}"):
            model(ids[:, 8:9], use_cache=True, **{real: getattr(out, real)})
        with pytest.raises(TransformersMismatch):
            model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)


def test_a_bounded_cache_updated_outside_a_planned_forward_raises():
    model = apply_swaa(tiny_model("qwen3"), SWAAConfig(sliding_window_size=3, keep_first=1))
    with torch.no_grad():
        cache = output_cache(model(torch.randint(3, VOCAB, (1, 6)), use_cache=True))
    layer = cache.layers[0]
    with pytest.raises(TransformersMismatch, match="SWAACache layer 0 was updated by a forward"):
        layer.update(layer.keys[:, :, :1], layer.values[:, :, :1])


def test_version_range(monkeypatch, caplog):
    monkeypatch.setattr(compat, "transformers_version", lambda: "5.12.1")
    with pytest.raises(ImportError, match=r"swaa needs transformers >= 5\.17\.0 .*installed: 5\.12\.1"):
        compat.check_transformers_version()
    monkeypatch.setattr(compat, "transformers_version", lambda: "5.99.0")
    monkeypatch.setattr(compat, "_warned_newer", False)
    with caplog.at_level(logging.WARNING, logger="swaa_patch.compat"):
        compat.check_transformers_version()
        compat.check_transformers_version()
    assert len([r for r in caplog.records if "tested with transformers" in r.message]) == 1
    monkeypatch.setattr(compat, "transformers_version", lambda: compat.NEWEST_TESTED_TRANSFORMERS)
    caplog.clear()
    compat.check_transformers_version()
    assert not caplog.records


def test_pyproject_declares_the_tested_range():
    text = (REPO / "pyproject.toml").read_text()
    newest = compat.NEWEST_TESTED_TRANSFORMERS.split(".")
    upper = f"{newest[0]}.{int(newest[1]) + 1}"
    assert f'"transformers>={compat.MIN_TRANSFORMERS},<{upper}"' in text
    ci = (REPO / ".ci" / "run").read_text()
    assert f"MIN_TRANSFORMERS={compat.MIN_TRANSFORMERS}\n" in ci


def _class_config(**extra) -> Qwen3Config:
    return Qwen3Config(**{**COMMON, "num_labels": 3, **extra})


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_sequence_classification_labels_are_not_answer_tokens(attn):
    """Class labels (one per sequence) under force_fa_decode: SWAA ignores them, outputs and loss
    equal stock's with a window that covers the sequence."""
    torch.manual_seed(0)
    stock = Qwen3ForSequenceClassification(_class_config(_attn_implementation=attn)).eval()
    swaa = Qwen3ForSequenceClassification(_class_config(_attn_implementation=attn)).eval()
    swaa.load_state_dict(stock.state_dict())
    apply_swaa(swaa, SWAAConfig(sliding_window_size=64, force_fa_decode=True))
    ids = torch.randint(3, VOCAB, (4, 13))
    labels = torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        expected = stock(input_ids=ids, labels=labels)
        got = swaa(input_ids=ids, labels=labels)
    assert rel_error(got.logits, expected.logits) < 1e-6
    assert abs(got.loss.item() - expected.loss.item()) < 1e-6


def test_token_classification_outputs_do_not_depend_on_labels():
    torch.manual_seed(0)
    model = Qwen3ForTokenClassification(_class_config(_attn_implementation="sdpa")).eval()
    apply_swaa(model, SWAAConfig(sliding_window_size=3, keep_first=1, force_fa_decode=True))
    ids = torch.randint(3, VOCAB, (2, 13))
    labels = torch.randint(0, 3, (2, 13))
    labels[:, :6] = -100  # would look like a prompt/answer split to a causal-LM rule
    with torch.no_grad():
        without = model(input_ids=ids).logits
        with_labels = model(input_ids=ids, labels=labels).logits
    assert torch.equal(without, with_labels)


def test_readme_example_runs_as_written_on_the_demo_model():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Example\n\n```python\n(.*?)```", readme, re.S).group(1)
    namespace = {"path": str(REPO / "demo" / "model")}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["model"].config.swaa_config.enabled
