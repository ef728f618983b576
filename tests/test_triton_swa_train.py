"""The trainable Triton SWA+sink attention (forward + band-cost backward) against float64 autograd
through the dense implementation of the rule in test_triton_swa.py (nothing of swaa_patch's rule or backends),
and its dispatch in whole models against the backend's own path.

Without a GPU the kernels run on Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1
before anything imports triton), in float32 with IEEE dots; tiny blocks make small shapes cross many
block boundaries: windows shorter and longer than a block, sink ranges inside, across and beyond the
window, the sink tail split into chunks and sink blocks, lengths that are not block multiples, GQA,
softcap, strided inputs. A CUDA machine runs the same tests on the compiled kernels.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the Triton SWA kernels cannot be tested")

from test_triton_swa import dense_reference  # noqa: E402  (the forward tests' float64 rule, written there)
from tiny import tiny_model  # noqa: E402

from swaa_patch import SWAAConfig, apply_swaa  # noqa: E402
from swaa_patch.backends import cudnn_swa, triton_swa, triton_swa_train  # noqa: E402
from swaa_patch.backends.triton_swa import swa_sink_attention  # noqa: E402
from swaa_patch.backends.triton_swa_train import (  # noqa: E402
    BackwardConfig,
    Launch,
    add_sink_tail_gradients,
    fused_train,
    kernel_for,
    swa_sink_attention_backward,
    trainable_swa_sink_attention,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)

TOL = 1e-5
# blocks of 16, two q blocks per sink-tail chunk, sink blocks of 16 keys
TINY = BackwardConfig.uniform(
    block_m=16, block_n=16, num_warps=1, num_stages=1, chunk_blocks=2, sink_block=16
)
TALL = BackwardConfig.uniform(
    block_m=32, block_n=16, num_warps=1, num_stages=1, chunk_blocks=1, sink_block=32
)
# each kernel its own tiles (as the GPU config may): dQ wide in queries, dK/dV wide in keys, the sink
# tail with q blocks of its own, the dQ kernel's sink-tail mode (the cuDNN path) with q blocks other than dQ's
MIXED = BackwardConfig(Launch(32, 16, 1, 1), Launch(16, 32, 1, 1), Launch(32, 16, 1, 1), chunk_blocks=3,
                       tail_dq=Launch(16, 16, 1, 1))  # fmt: skip
# the sink-tail kernel's other grid: a chunk's sink blocks as the slowest axis instead of side by side
TINY_UNPAIRED = dataclasses.replace(TINY, pair_sinks=False)


def reference_grads(q, k, v, grad_out, window, keep_first, scaling, softcap=None):
    leaves = [t.detach().cpu().double().requires_grad_() for t in (q, k, v)]
    out, _ = dense_reference(*leaves, window, keep_first, scaling, softcap)  # float64 CPU leaves: no copies
    out.backward(grad_out.detach().cpu().double())
    return out.detach(), [t.grad for t in leaves]


def rel(a, b):
    return float((a.double().cpu() - b.cpu()).norm() / b.norm().clamp_min(1e-30))


def inputs(batch, heads, kv_heads, seq, dim, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq, dim, generator=g, dtype=dtype)
    k = torch.randn(batch, kv_heads, seq, dim, generator=g, dtype=dtype)
    v = torch.randn(batch, kv_heads, seq, dim, generator=g, dtype=dtype)
    grad_out = torch.randn(batch, heads, seq, dim, generator=g, dtype=dtype)
    return [t.to(DEVICE) for t in (q, k, v, grad_out)]


# (seq, window, keep_first, config): windows inside / across blocks, sinks inside the first block, across
# two sink blocks and beyond the window, a window covering everything (no sink tail), no sinks at all,
# windows wide enough for unmasked interior blocks
CASES = [
    (45, 8, 3, TINY),
    (70, 16, 20, TINY_UNPAIRED),
    (70, 5, 40, TALL),
    (33, 64, 4, TINY),
    (61, 12, 0, TINY),
    (64, 1, 2, TINY),
    (90, 40, 20, TINY),  # unmasked interior blocks in both kernels, with sinks and a sink tail
    (100, 48, 5, TALL),
    (50, None, 0, TALL),
    (110, 40, 20, MIXED),
    (77, 16, 3, MIXED),
]


@pytest.mark.parametrize("seq, window, keep_first, config", CASES)
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_backward_matches_float64_autograd(seq, window, keep_first, config, softcap):
    q, k, v, grad_out = inputs(2, 4, 2, seq, 16, seed=seq + (keep_first or 0))
    scaling = 0.3
    out, lse = swa_sink_attention(q, k, v, window, keep_first, scaling, softcap)
    dq, dk, dv = swa_sink_attention_backward(q, k, v, out, lse, grad_out, window, keep_first, scaling, softcap,
                                             config=config)  # fmt: skip
    expected_out, (eq, ek, ev) = reference_grads(q, k, v, grad_out, window, keep_first, scaling, softcap)
    assert rel(out, expected_out) < TOL
    assert rel(dq, eq) < TOL and rel(dk, ek) < TOL and rel(dv, ev) < TOL, (
        rel(dq, eq),
        rel(dk, ek),
        rel(dv, ev),
    )


def band_backward_float64(q, k, v, out, lse, grad_out, window, scaling):
    """What cuDNN's sliding-window backward computes when handed the rule's final ``out`` and ``lse``
    (a float64 stand-in on the CPU; the real one: tests/test_cudnn_swa.py on a GPU): the gradients
    of the band pairs ``0 <= i - j < window`` alone, ``dS = P * (dO V^T - rowsum(dO * O))`` with
    ``P = exp(S - lse)``, GQA heads summed into their kv head."""
    q, k, v, out, lse, grad_out = (t.detach().cpu().double() for t in (q, k, v, out, lse, grad_out))
    batch, heads, seq, dim = q.shape
    groups = heads // k.shape[1]
    k_all, v_all = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    dist = torch.arange(seq)[:, None] - torch.arange(seq)[None, :]
    band = (dist >= 0) & (dist < window)
    p = torch.exp(q @ k_all.transpose(-1, -2) * scaling - lse[..., None]).masked_fill(~band, 0.0)
    ds = p * (grad_out @ v_all.transpose(-1, -2) - (grad_out * out).sum(-1, keepdim=True))
    dq = ds @ k_all * scaling
    dk = (ds.transpose(-1, -2) @ q * scaling).view(batch, -1, groups, seq, dim).sum(2)
    dv = (p.transpose(-1, -2) @ grad_out).view(batch, -1, groups, seq, dim).sum(2)
    return dq, dk, dv


WINDOWED_CASES = [case for case in CASES if case[1] is not None]


@pytest.mark.parametrize("seq, window, keep_first, config", WINDOWED_CASES)
def test_sink_tail_completes_a_window_only_backward(seq, window, keep_first, config):
    """The cuDNN training path's decomposition: a band-only backward run with the rule's final out
    and lse, plus add_sink_tail_gradients (the sink tail's dK/dV and dQ), is the rule's backward."""
    q, k, v, grad_out = inputs(2, 4, 2, seq, 16, seed=seq + keep_first + 1)
    scaling = 0.3
    out, lse = swa_sink_attention(q, k, v, window, keep_first, scaling)
    dq, dk, dv = (t.to(DEVICE, q.dtype) for t in band_backward_float64(q, k, v, out, lse, grad_out, window, scaling))
    band_only = [dq.clone(), dk.clone(), dv.clone()]
    add_sink_tail_gradients(q, k, v, out, lse, grad_out, dq, dk, dv, window, keep_first, scaling, config=config)
    _, expected = reference_grads(q, k, v, grad_out, window, keep_first, scaling)
    errors = [rel(got, want) for got, want in zip((dq, dk, dv), expected)]
    assert max(errors) < TOL, errors
    if keep_first and seq > window:  # the tail really mattered: the band alone is wrong for the sinks
        assert rel(band_only[0], expected[0]) > 1e-3 and rel(band_only[1], expected[1]) > 1e-3


@pytest.fixture
def cudnn_stand_ins(monkeypatch):
    """cuDNN's two calls replaced by float64 stand-ins: window-only attention (then the real Triton
    sink merge) and the band backward above."""

    def window_then_merge(q, k, v, window, keep_first, scaling, offset=0):
        band_out, band_lse = dense_reference(q, k, v, window, 0, scaling)
        out, lse = band_out.to(q.device, q.dtype), band_lse.to(q.device, torch.float32)
        return triton_swa.merge_sinks(q, k, v, out, lse, window, keep_first, scaling)

    def band_backward(q, k, v, out, lse, grad_out, window, scaling):
        return tuple(t.to(q.device, q.dtype) for t in band_backward_float64(q, k, v, out, lse, grad_out, window, scaling))

    monkeypatch.setattr(cudnn_swa, "swa_sink_attention_cudnn", window_then_merge)
    monkeypatch.setattr(cudnn_swa, "window_attention_backward", band_backward)


def test_cudnn_kernel_through_autograd_with_stand_ins(cudnn_stand_ins):
    """``kernel="cudnn"`` wiring in the autograd Function: the gradients of strided GQA inputs are
    the rule's."""
    q, k, v, grad_out = inputs(1, 8, 2, 40, 16, seed=11)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for t in (q, k, v))
    out = trainable_swa_sink_attention(q, k, v, 9, 5, 0.2, kernel="cudnn")
    out.backward(grad_out)
    expected_out, (eq, ek, ev) = reference_grads(q, k, v, grad_out, 9, 5, 0.2)
    assert rel(out.detach(), expected_out) < TOL
    assert rel(q.grad, eq) < TOL and rel(k.grad, ek) < TOL and rel(v.grad, ev) < TOL


def test_auto_takes_cudnn_only_where_it_can_serve(monkeypatch):
    q, k, _, _ = inputs(1, 2, 1, 20, 16)
    monkeypatch.setattr(cudnn_swa, "unusable_reason", lambda q, k, softcap, offset: None)
    with fused_train("auto"):
        assert kernel_for(q, k, 8, None) == "cudnn"
        assert kernel_for(q, k, None, None) == "triton"  # full attention has no band
    with fused_train("triton"):
        assert kernel_for(q, k, 8, None) == "triton"
    monkeypatch.setattr(cudnn_swa, "unusable_reason", lambda q, k, softcap, offset: "no cudnn-frontend")
    with fused_train("auto"):
        assert kernel_for(q, k, 8, None) == "triton"
    with pytest.raises(ValueError, match="kernel: must be one of"):
        trainable_swa_sink_attention(q, k, k, 8, 1, 0.3, kernel="flash")


def test_autograd_function_with_strided_inputs_and_gqa_of_four():
    """Through torch.autograd: (B, L, H, D) tensors transposed, as transformers hands them over."""
    q, k, v, grad_out = inputs(1, 8, 2, 40, 32, seed=7)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for t in (q, k, v))
    out = trainable_swa_sink_attention(q, k, v, 9, 5, 0.2)
    out.backward(grad_out)
    expected_out, (eq, ek, ev) = reference_grads(q, k, v, grad_out, 9, 5, 0.2)
    assert rel(out.detach(), expected_out) < TOL
    assert rel(q.grad, eq) < TOL and rel(k.grad, ek) < TOL and rel(v.grad, ev) < TOL


def test_a_wrong_rule_fails_the_check():
    """The reference is sharp: the kernel's gradients for keep_first 3 are not those of keep_first 0."""
    q, k, v, grad_out = inputs(1, 2, 1, 45, 16, seed=3)
    out, lse = swa_sink_attention(q, k, v, 8, 3, 0.3)
    _, dk, _ = swa_sink_attention_backward(q, k, v, out, lse, grad_out, 8, 3, 0.3, config=TINY)
    _, (_, wrong, _) = reference_grads(q, k, v, grad_out, 8, 0, 0.3)
    assert rel(dk, wrong) > 1e-2


def test_bad_inputs_are_refused_with_the_field_named():
    q, k, v, grad_out = inputs(1, 2, 1, 20, 16)
    out, lse = swa_sink_attention(q, k, v, 4, 1, 0.3)
    with pytest.raises(ValueError, match="q length 19 must equal k length 20"):
        swa_sink_attention_backward(
            q[:, :, 1:], k, v, out[:, :, 1:], lse[:, :, 1:], grad_out[:, :, 1:], 4, 1, 0.3
        )
    with pytest.raises(ValueError, match="lse must be float32"):
        swa_sink_attention_backward(q, k, v, out, lse.double(), grad_out, 4, 1, 0.3)
    with pytest.raises(ValueError, match="fused_train: must be one of \\('auto', 'fa4', 'triton', 'off', 'force'\\)"):
        triton_swa_train.set_fused_train("on")


MODEL_CONFIGS = {
    "window+sinks": SWAAConfig(sliding_window_size=5, keep_first=2),
    "interleaved": SWAAConfig(sliding_window_size=4, keep_first=1, non_sliding_layers=[1]),
    # answer tokens (labels after each row's prompt) attend to every earlier key on sliding layers
    "force_fa_decode": SWAAConfig(
        sliding_window_size=3, keep_first=2, force_fa_decode=True, non_sliding_layers=[2]
    ),
}


# flex_attention has no backward on the CPU: its rows (softcapped gemma2 among them) run on a GPU only
TRAIN_FAMILIES = [("qwen3", "sdpa"), ("llama", "sdpa"), ("mistral", "sdpa")]
if DEVICE.type == "cuda":
    TRAIN_FAMILIES += [("gemma2", "flex_attention"), ("qwen3", "flex_attention")]


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
@pytest.mark.parametrize("family, attn", TRAIN_FAMILIES)
def test_training_step_takes_the_kernel_and_matches_the_backend(family, attn, name):
    """A whole model's loss and parameter gradients with the fused training path equal the backend's
    own path (itself checked against float64 in tests/test_equivalence.py); the kernel really ran."""
    config = MODEL_CONFIGS[name]
    model = apply_swaa(tiny_model(family, attn), config).to(DEVICE).train()  # training: no cache (dropout 0)
    ids = torch.randint(3, model.config.vocab_size, (2, 23), generator=torch.Generator().manual_seed(1)).to(
        DEVICE
    )
    labels = ids.clone()
    labels[0, :15], labels[1, :9] = -100, -100  # prompts of 15 and 9 tokens, answers after them

    def loss_and_grads():
        model.zero_grad()
        loss = model(ids, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    expected_loss, expected = loss_and_grads()
    triton_swa_train.PATH_COUNTS.clear()
    with fused_train("force"):
        loss, grads = loss_and_grads()
    # full layers: SDPA causal, or the Triton kernel with no window when logits are softcapped (gemma2)
    softcapped = getattr(model.config, "attn_logit_softcapping", None) is not None
    causal = 0 if softcapped else len(config.non_sliding_layers)
    assert triton_swa_train.PATH_COUNTS[triton_swa_train.TAKEN] == model.config.num_hidden_layers - causal
    assert triton_swa_train.PATH_COUNTS[triton_swa_train.CAUSAL_TAKEN] == causal
    assert abs(float(loss - expected_loss)) < 1e-5
    for n, g in expected.items():
        assert rel(grads[n], g.double()) < 1e-4, n


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_auto_routes_a_training_step_to_cudnn_where_it_can_serve(monkeypatch, cudnn_stand_ins, name):
    """``auto`` in a whole model: every sliding layer's training call takes the cuDNN pair (stood in,
    as the CPU has no cuDNN; the tensor checks relaxed to the CPU's float32), full layers SDPA's causal
    kernel, and the loss and parameter gradients equal the backend's own path (answer rows included)."""
    from swaa_patch.backends import fused_prefill

    monkeypatch.setattr(triton_swa_train, "tensor_reason", lambda query, strict: fused_prefill.tensor_reason(query, False))
    monkeypatch.setattr(cudnn_swa, "unusable_reason", lambda q, k, softcap, offset: None)
    config = MODEL_CONFIGS[name]
    model = apply_swaa(tiny_model("qwen3", "sdpa"), config).to(DEVICE).train()
    ids = torch.randint(3, model.config.vocab_size, (2, 23), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    labels = ids.clone()
    labels[0, :15], labels[1, :9] = -100, -100

    def loss_and_grads():
        model.zero_grad()
        loss = model(ids, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with fused_train("off"):
        expected_loss, expected = loss_and_grads()
    triton_swa_train.PATH_COUNTS.clear()
    with fused_train("auto"):
        loss, grads = loss_and_grads()
    full = len(config.non_sliding_layers)
    assert triton_swa_train.PATH_COUNTS == {"cudnn": model.config.num_hidden_layers - full,
                                            **({triton_swa_train.CAUSAL_TAKEN: full} if full else {})}  # fmt: skip
    assert abs(float(loss - expected_loss)) < 1e-5
    for n, g in expected.items():
        assert rel(grads[n], g.double()) < 1e-4, n


def test_calls_it_cannot_serve_keep_the_backend_path():
    """Left padding (and inference, which the fused prefill serves) never reach the training kernel."""
    model = apply_swaa(tiny_model("qwen3", "sdpa"), SWAAConfig(sliding_window_size=4, keep_first=1)).train()
    ids = torch.randint(3, model.config.vocab_size, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    triton_swa_train.PATH_COUNTS.clear()
    with fused_train("force"):
        model(ids, attention_mask=mask, labels=ids).loss.backward()
        with torch.no_grad():
            model(ids)
    assert triton_swa_train.PATH_COUNTS[triton_swa_train.TAKEN] == 0
    assert triton_swa_train.PATH_COUNTS["padding or empty slots"] > 0
    assert triton_swa_train.PATH_COUNTS["no grad"] > 0


def test_default_takes_cuda_bf16_training_calls_only():
    """The shipped default (``auto``) routes bf16 training calls on a GPU to the kernels (FA4 or cuDNN's
    band where they can serve, else Triton) and leaves CPU calls (and float32 ones) on the backend's path."""
    assert triton_swa_train.SETTING.get() == "auto", "the test suite must run with the shipped default"
    model = apply_swaa(tiny_model("qwen3", "sdpa"), SWAAConfig(sliding_window_size=4, keep_first=1)).train()
    model = model.to(DEVICE, torch.bfloat16)
    ids = torch.randint(3, model.config.vocab_size, (2, 12), device=DEVICE)
    triton_swa_train.PATH_COUNTS.clear()
    model(ids, labels=ids).loss.backward()
    layers = model.config.num_hidden_layers
    if DEVICE.type == "cuda":
        probe = torch.zeros(2, 4, 12, model.config.head_dim, device=DEVICE, dtype=torch.bfloat16)
        served = kernel_for(probe, probe[:, :2], 4, None)  # fa4 / cudnn where installed on Hopper, else triton
        assert triton_swa_train.PATH_COUNTS == {served: layers}
    else:
        assert triton_swa_train.PATH_COUNTS == {"device": layers}


def test_training_forward_has_a_fixed_launch_on_gpus_only():
    """16-bit CUDA inputs take TRAIN_FORWARD_CONFIG (no autotuning before a first step); float32 and
    the interpreter keep the forward's own fixed configs."""
    from types import SimpleNamespace

    def fake(device: str, dtype):
        return SimpleNamespace(device=torch.device(device), dtype=dtype)

    assert (
        triton_swa_train._forward_config(fake("cuda", torch.bfloat16))
        is triton_swa_train.TRAIN_FORWARD_CONFIG
    )
    assert (
        triton_swa_train._forward_config(fake("cuda", torch.float16)) is triton_swa_train.TRAIN_FORWARD_CONFIG
    )
    # the configs the forward itself takes there (it took them when handed None before)
    assert triton_swa_train._forward_config(fake("cuda", torch.float32)) is triton_swa.FLOAT32_CONFIG
    assert triton_swa_train._forward_config(fake("cpu", torch.bfloat16)) is triton_swa.INTERPRETER_CONFIG
