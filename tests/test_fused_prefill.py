"""The Triton prefill fast path inside whole models: taken where the call is eligible (and then
checked against the float64 reference of tests/reference.py), never taken where it is not.

Without a GPU the kernel runs on Triton's CPU interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), which the ``"force"`` setting allows, in float32. Which path ran is read from
``PATH_COUNTS`` (one count per layer call: ``"triton"`` or the reason for falling back).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the Triton prefill path cannot run")

from reference import RefRule, generate_with_reference, reference_logits, reference_model, rel_error  # noqa: E402
from test_equivalence import _left_padded, _positions  # noqa: E402
from tiny import VOCAB, tiny_model  # noqa: E402

from swaa_patch import SWAAConfig, apply_swaa, chunked_prefill  # noqa: E402
from swaa_patch.backends import cudnn_swa  # noqa: E402
from swaa_patch.backends.fused_prefill import (  # noqa: E402
    CUDNN_TAKEN,
    PATH_COUNTS,
    TAKEN,
    aligned_layout,
    set_triton_prefill,
    triton_prefill,
    triton_prefill_setting,
)
from swaa_patch.plan import build_plan  # noqa: E402

# the models here are float32 CPU models: their Triton calls need the interpreter even where a GPU is
# present (on an H200 without it, 13 tests failed with "the Triton SWA kernel runs on CUDA tensors";
# the compiled kernels are covered there by benchmarks/gpu_correctness.py and attention_speed.py)
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("CPU models through Triton's interpreter: set TRITON_INTERPRET=1", allow_module_level=True)

TOL = 1e-5
WINDOW, KEEP = 5, 2
# layer 1 attends fully (it keeps SDPA's / flex's own causal path); layers 0 and 2 slide
CONFIG = SWAAConfig(sliding_window_size=WINDOW, keep_first=KEEP, non_sliding_layers=(1,))
RULE = RefRule(WINDOW, KEEP, False, (1,))
SLIDING = 2
# The interpreter's cost is per (query block, head) program: few heads and layers keep this file fast.
SHAPE = dict(num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1)
BACKENDS = ["sdpa", "flex_attention"]


@pytest.fixture(autouse=True)
def counts():
    PATH_COUNTS.clear()
    yield PATH_COUNTS
    PATH_COUNTS.clear()


def _models(attn: str, config: SWAAConfig = CONFIG, family: str = "qwen3", **overrides):
    model = tiny_model(family, attn, **SHAPE, **overrides)
    ref = reference_model(model)
    return apply_swaa(model, config), ref


def _ids(batch: int = 1, length: int = 37, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "attn, use_cache, batch",
    [("sdpa", False, 2), ("sdpa", True, 1), ("flex_attention", False, 1), ("flex_attention", True, 2)],
)
def test_prefill_takes_the_kernel_and_matches_reference(attn, use_cache, batch, counts):
    """With use_cache the sliding layers read a fresh bounded cache: empty sink slots, then the prompt."""
    model, ref = _models(attn)
    ids = _ids(batch)
    with triton_prefill("force"), torch.no_grad():
        out = model(input_ids=ids, use_cache=use_cache).logits
    assert counts == {TAKEN: SLIDING, "full-attention layer": 1}
    assert rel_error(out, reference_logits(ref, RULE, ids)) < TOL


def test_softcapped_family_takes_the_kernel(counts):
    """Gemma2: logit softcap and query_pre_attn_scalar scaling reach the kernel as arguments."""
    # a cap small enough to bend the tiny model's scores (Gemma2's default of 50 barely would)
    model, ref = _models("flex_attention", family="gemma2", attn_logit_softcapping=0.5)
    ids = _ids()
    with triton_prefill("force"), torch.no_grad():
        out = model(input_ids=ids, use_cache=False).logits
    assert counts == {TAKEN: SLIDING, "full-attention layer": 1}
    assert rel_error(out, reference_logits(ref, RULE, ids)) < TOL


@pytest.mark.parametrize("bounded", [True, False], ids=["bounded-cache", "dynamic-cache"])
def test_chunked_prefill_takes_the_kernel_on_every_chunk(bounded, counts):
    """Chunks after the first read cached keys: sink slots + window buffer (bounded, positions jump
    after the sinks) or every earlier key (DynamicCache, query t is key past_len + t)."""
    config = dataclasses.replace(CONFIG, bounded_cache=bounded)
    model, ref = _models("sdpa", config)
    ids, chunk = _ids(length=22), 8  # chunk >= W - 1 + keep_first: the window buffer never holds a sink twice
    with triton_prefill("force"):
        logits = chunked_prefill(model, ids, chunk_size=chunk, return_all_logits=True).logits
    chunks = -(-ids.shape[1] // chunk)
    assert counts == {TAKEN: SLIDING * chunks, "full-attention layer": chunks}
    assert rel_error(logits, reference_logits(ref, RULE, ids)) < TOL


def test_partly_filled_bounded_cache_falls_back_until_the_window_buffer_is_clean(counts):
    """Chunks shorter than W - 1 + keep_first leave empty slots in the window buffer: those
    chunks fall back, later ones take the kernel again, and every logit follows the rule."""
    model, ref = _models("sdpa")
    ids = _ids(length=12)
    with triton_prefill("force"):
        logits = chunked_prefill(model, ids, chunk_size=3, return_all_logits=True).logits
    assert counts["padding or empty slots"] > 0 and counts[TAKEN] > SLIDING
    assert rel_error(logits, reference_logits(ref, RULE, ids)) < TOL


def test_generation_uses_the_kernel_for_prefill_only(counts):
    model, ref = _models("flex_attention")
    ids = _ids(length=20)
    valid = torch.ones_like(ids, dtype=torch.bool)
    with triton_prefill("force"):
        got, expected, _ = generate_with_reference(model, ref, RULE, ids, valid, WINDOW + 1)
    assert counts[TAKEN] == SLIDING
    assert counts["decode"] > 0
    assert rel_error(got, expected) < TOL


def _fallback(attn, counts, reason, expected_count, grad=False, config=CONFIG, rule=RULE, **inputs):
    model, ref = _models(attn, config)
    with triton_prefill("force"), torch.set_grad_enabled(grad):
        out = model(use_cache=False, **inputs).logits
    assert counts[TAKEN] == 0
    assert counts[reason] == expected_count
    valid = inputs.get("attention_mask")
    expected = reference_logits(
        ref, rule, inputs["input_ids"], valid, inputs.get("position_ids"), labels=inputs.get("labels")
    )
    assert rel_error(out.detach(), expected, valid) < TOL
    return out


def test_padding_falls_back(counts):
    ids, valid = _left_padded(3, 26, [0, 5, 11])
    _fallback(
        "sdpa", counts, "padding or empty slots", SLIDING,
        input_ids=ids, attention_mask=valid.long(), position_ids=_positions(valid),
    )  # fmt: skip


@pytest.mark.parametrize("attn", BACKENDS)
def test_packed_documents_fall_back(attn, counts):
    pids = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in [[9, 7, 12], [20, 8]]])
    _fallback(attn, counts, "packed documents", SLIDING, input_ids=_ids(2, 28), position_ids=pids)


def test_answer_tokens_fall_back(counts):
    """Labels under force_fa_decode: answer tokens attend fully on sliding layers."""
    config = dataclasses.replace(CONFIG, force_fa_decode=True)
    rule = dataclasses.replace(RULE, force_fa_decode=True)
    ids = _ids(2)
    labels = ids.clone()
    labels[0, :20], labels[1, :30] = -100, -100
    _fallback(
        "sdpa", counts, "answer tokens", SLIDING, config=config, rule=rule, input_ids=ids, labels=labels
    )


# flex_attention has no backward on CPU
@pytest.mark.parametrize("attn", BACKENDS if torch.cuda.is_available() else ["sdpa"])
def test_inputs_that_need_gradients_fall_back(attn, counts):
    """The kernel has no backward: a forward with grad enabled must keep a differentiable path."""
    out = _fallback(attn, counts, "grad", SLIDING + 1, grad=True, input_ids=_ids())
    out.sum().backward()  # would fail if any layer's output came from the kernel


@pytest.fixture
def fake_cudnn(monkeypatch):
    """cuDNN's band (window-only attention with its log-sum-exp), stood in for by the Triton kernel
    with no sinks, and the usability check reduced to cuDNN's layout rule (queries = last keys), so
    the cuDNN + sink-merge dispatch runs on the CPU. Records each band call's (q_len, k_len)."""
    from swaa_patch.backends.triton_swa import swa_sink_attention

    calls = []

    def window_attention(q, k, v, window, scaling):
        calls.append((q.shape[2], k.shape[2]))
        return swa_sink_attention(q, k, v, window, 0, scaling, offset=k.shape[2] - q.shape[2])

    def unusable_reason(q, k, softcap, offset):
        return "softcap" if softcap is not None else None if offset + q.shape[2] == k.shape[2] else "keys"

    monkeypatch.setattr(cudnn_swa, "window_attention", window_attention)
    monkeypatch.setattr(cudnn_swa, "unusable_reason", unusable_reason)
    return calls


@pytest.mark.parametrize("attn", BACKENDS)
def test_cudnn_band_plus_sink_merge_matches_reference(attn, counts, fake_cudnn):
    """Prompt and chunked prefill through the cuDNN dispatch: band + merge must equal the rule."""
    model, ref = _models(attn)
    ids = _ids(2)
    with triton_prefill("force"), torch.no_grad():
        out = model(input_ids=ids, use_cache=False).logits
    assert counts == {CUDNN_TAKEN: SLIDING, "full-attention layer": 1}
    assert rel_error(out, reference_logits(ref, RULE, ids)) < TOL
    counts.clear()
    with triton_prefill("force"):
        logits = chunked_prefill(model, ids[:1], chunk_size=8, return_all_logits=True).logits
    assert counts[CUDNN_TAKEN] == SLIDING * 5 and counts[TAKEN] == 0
    assert rel_error(logits, reference_logits(ref, RULE, ids[:1])) < TOL
    assert len(fake_cudnn) == SLIDING * 6


def test_triton_setting_and_softcap_keep_the_triton_kernel(counts, fake_cudnn):
    model, _ = _models("sdpa")
    with triton_prefill("triton"), torch.no_grad():
        model(input_ids=_ids(), use_cache=False)
    assert counts["device"] == SLIDING  # "triton" has auto's CUDA 16-bit rule ...
    counts.clear()
    gemma, ref = _models("flex_attention", family="gemma2", attn_logit_softcapping=0.5)
    with triton_prefill("force"), torch.no_grad():
        out = gemma(input_ids=_ids(), use_cache=False).logits
    assert counts == {TAKEN: SLIDING, "full-attention layer": 1} and not fake_cudnn  # ... softcap: Triton
    assert rel_error(out, reference_logits(ref, RULE, _ids())) < TOL


def test_cudnn_path_is_refused_where_it_was_not_checked(monkeypatch):
    q = torch.zeros(1, 2, 8, 16)
    assert cudnn_swa.unusable_reason(q, q, None, 0) == "device or dtype"
    if not torch.cuda.is_available():
        return
    q = q.to("cuda", torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert cudnn_swa.unusable_reason(q, q, None, 0) == "not Hopper"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert cudnn_swa.unusable_reason(q, q, 30.0, 0) == "softcap"
    assert cudnn_swa.unusable_reason(q[:, :, :4], q, None, 2) == "keys after the queries"


def test_off_setting_never_consults_the_kernel(counts):
    model, ref = _models("sdpa")
    ids = _ids()
    with triton_prefill("off"), torch.no_grad():
        out = model(input_ids=ids, use_cache=False).logits
    assert not counts
    assert rel_error(out, reference_logits(ref, RULE, ids)) < TOL


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal of the auto setting")
def test_auto_setting_leaves_cpu_float32_alone(counts):
    model, _ = _models("sdpa")
    with triton_prefill("auto"), torch.no_grad():
        model(input_ids=_ids(), use_cache=False)
    assert counts == {"device": SLIDING, "full-attention layer": 1}


def test_process_default_is_auto_unless_the_environment_says_otherwise():
    """The path is on by default (CUDA 16-bit calls only); SWAA_TRITON_PREFILL overrides it."""
    code = "from swaa_patch.backends.fused_prefill import triton_prefill_setting as s; print(s())"
    env = {k: v for k, v in os.environ.items() if k != "SWAA_TRITON_PREFILL"}
    for value, expected in ((None, "auto"), ("off", "off")):
        if value is not None:
            env["SWAA_TRITON_PREFILL"] = value
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected


def test_auto_needs_an_ampere_or_newer_gpu(monkeypatch):
    """On a pre-Ampere GPU the default must not send bf16 prefill to a kernel that cannot compile."""
    from swaa_patch.backends import fused_prefill as module

    for capability, expected in (((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert module.gpu_supported(torch.device("cuda")) is expected


def test_setting_is_validated_and_restored():
    before = triton_prefill_setting()
    with pytest.raises(ValueError, match="triton_prefill: must be one of"):
        set_triton_prefill("always")
    with triton_prefill("off"):
        assert triton_prefill_setting() == "off"
    assert triton_prefill_setting() == before


def _bounded_plan(stored_pos: list[int], q_len: int, past_len: int):
    plan = build_plan(CONFIG, batch_size=1, q_len=q_len, device=torch.device("cpu"), past_len=past_len)
    stored = torch.tensor([stored_pos])
    plan.with_bounded_cache(stored, torch.ones_like(stored, dtype=torch.bool), frozenset({0}))
    return plan


@pytest.mark.parametrize(
    "stored_pos, expected",
    [
        ([0, 1, 10, 11, 12], (0, None)),  # sinks, then a window buffer that ends where the queries start
        ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], (0, None)),  # nothing dropped yet: positions == indices
        ([0, 1, 9, 11, 12], (0, "positions")),  # a gap in the window buffer
        ([1, 0, 10, 11, 12], (0, "positions")),  # sink slots out of order
        ([0, 1, 10, 11], (0, "positions")),  # the queries do not follow the buffer
    ],
)
def test_layout_check(stored_pos, expected):
    plan = _bounded_plan(stored_pos, q_len=4, past_len=13)
    assert aligned_layout(plan, plan.keys(0)) == expected
