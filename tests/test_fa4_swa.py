"""FlashAttention-4's one-pass path for the rule (``fa4_swa.py``).

On the CPU: the block layout against the dense rule tile by tile (every tile it calls full is visible
throughout, every tile it leaves out holds no visible pair), FA4's packed lists, the reasons a call
cannot take FA4, and the dispatch's choice of it. On a Hopper GPU with flash-attn-4 installed: out,
dq, dk and dv against float64 autograd through the dense rule of tests/test_triton_swa.py, and a
whole model's training step through the dispatch against the backend's own path.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from test_triton_swa import dense_reference  # the forward tests' float64 rule, written there
from tiny import tiny_model

from swaa_patch import SWAAConfig, apply_swaa
from swaa_patch.backends import cudnn_swa, fa4_swa, triton_swa_train
from swaa_patch.backends.triton_swa_train import fused_train, kernel_for

# (n, block_q, block_k, window, keep_first): tiles cut by the end, windows inside one tile and wider
# than the sequence, no sinks, sinks past the window and past the sequence, a one-token window, and
# windows that end exactly at a tile's farthest pair (127 = 127 - 0; 117 = 127 - the sinks' 10)
LAYOUTS = [
    (600, 64, 64, 127, 0),
    (600, 64, 64, 117, 10),
    (1000, 128, 128, 200, 37),
    (1024, 64, 128, 128, 100),
    (777, 128, 64, 300, 0),
    (512, 128, 128, 2048, 100),
    (1300, 128, 128, 129, 128),
    (900, 64, 64, 1, 5),
    (300, 128, 128, 50, 400),
    (100, 128, 128, 10, 3),
]


def dense_rule(n: int, window: int, keep_first: int) -> torch.Tensor:
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (j <= i) & ((i - j < window) | (j < keep_first))


@pytest.mark.parametrize("n, block_q, block_k, window, keep_first", LAYOUTS)
def test_block_layout_matches_the_dense_rule_tile_by_tile(n, block_q, block_k, window, keep_first):
    dense = dense_rule(n, window, keep_first)
    layout = fa4_swa.rule_block_layout(n, block_q, block_k, window, keep_first)
    assert layout.partial.shape == layout.full.shape == (-(-n // block_q), -(-n // block_k))
    assert not (layout.partial & layout.full).any()
    for m in range(layout.full.shape[0]):
        for b in range(layout.full.shape[1]):
            tile = dense[m * block_q : (m + 1) * block_q, b * block_k : (b + 1) * block_k]
            cut = tile.shape != (block_q, block_k)
            assert bool(layout.full[m, b]) == (bool(tile.all()) and not cut), (m, b)
            assert bool(layout.partial[m, b] | layout.full[m, b]) == bool(tile.any()), (m, b)


def test_packed_lists_each_rows_set_columns_first_in_order():
    rows = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    count, order = fa4_swa.packed(rows)
    assert count.dtype == order.dtype == torch.int32
    assert count.tolist() == [[[3, 0, 2]]] and order.shape == (1, 1, 3, 5)
    assert [order[0, 0, r, : int(count[0, 0, r])].tolist() for r in range(3)] == [[1, 3, 4], [], [0, 4]]


def fake(device="cuda", dtype=torch.bfloat16, length=64, dim=128):
    return SimpleNamespace(device=torch.device(device), dtype=dtype, shape=(1, 4, length, dim))


def test_unusable_reasons_name_what_rules_fa4_out(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    monkeypatch.setattr(fa4_swa, "installed_version", lambda: fa4_swa.TESTED_VERSIONS[0])
    q = fake()
    assert fa4_swa.unusable_reason(q, q, None) is None
    assert fa4_swa.unusable_reason(fake("cpu"), q, None) == "device or dtype"
    assert fa4_swa.unusable_reason(fake(dtype=torch.float32), q, None) == "device or dtype"
    assert fa4_swa.unusable_reason(q, q, 30.0) == "softcap"
    assert fa4_swa.unusable_reason(q, fake(length=80), None) == "cached keys"
    for dim in fa4_swa.TESTED_HEAD_DIMS:
        assert fa4_swa.unusable_reason(fake(dim=dim), fake(dim=dim), None) is None
    for dim in (16, 100, 256, 320):  # 16: FA4 4.0.0b36 computed it wrong; 256: refused with block sparsity
        assert fa4_swa.unusable_reason(fake(dim=dim), fake(dim=dim), None) == "head_dim"
    monkeypatch.setattr(fa4_swa, "installed_version", lambda: "4.0.0b99")
    assert "4.0.0b99 not among the tested" in fa4_swa.unusable_reason(q, q, None)
    monkeypatch.setattr(fa4_swa, "installed_version", lambda: None)
    assert fa4_swa.unusable_reason(q, q, None) == "no flash-attn-4"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (10, 0))
    assert fa4_swa.unusable_reason(q, q, None) == "not Hopper"


def test_the_fa4_setting_takes_fa4_where_it_can_serve_and_auto_never(monkeypatch, caplog):
    """Under ``fa4`` a call FA4 cannot serve takes cuDNN (else Triton), with a warning naming why."""
    triton_swa_train._warn_fa4_not_taken.cache_clear()  # said once per reason and process
    q = torch.zeros(1, 2, 20, 16)
    monkeypatch.setattr(fa4_swa, "unusable_reason", lambda q, k, softcap: None)
    monkeypatch.setattr(cudnn_swa, "unusable_reason", lambda q, k, softcap, offset: None)
    with fused_train("fa4"):
        assert kernel_for(q, q, 8, None) == "fa4"
        assert kernel_for(q, q, None, None) == "triton"  # full attention has no band
    with fused_train("auto"):
        assert kernel_for(q, q, 8, None) == "cudnn"
    with fused_train("triton"):
        assert kernel_for(q, q, 8, None) == "triton"
    monkeypatch.setattr(fa4_swa, "unusable_reason", lambda q, k, softcap: "no flash-attn-4")
    with fused_train("fa4"), caplog.at_level(logging.WARNING, logger=triton_swa_train.__name__):
        assert kernel_for(q, q, 8, None) == "cudnn"
    assert "SWAA_FUSED_TRAIN=fa4: FlashAttention-4 cannot serve this call (no flash-attn-4)" in caplog.text
    monkeypatch.setattr(cudnn_swa, "unusable_reason", lambda q, k, softcap, offset: "no cudnn-frontend")
    with fused_train("fa4"):
        assert kernel_for(q, q, 8, None) == "triton"


def test_the_fa4_kernel_takes_the_rule_as_given(monkeypatch):
    """``kernel="fa4"`` hands q, k, v and the rule to fa4_swa unchanged (no autograd Function of ours
    around it: FA4's own computes the backward)."""
    seen = []
    monkeypatch.setattr(fa4_swa, "swa_sink_attention_fa4", lambda *args: seen.append(args) or args[0])
    q, k = torch.zeros(1, 4, 10, 8), torch.ones(1, 2, 10, 8)
    out = triton_swa_train.trainable_swa_sink_attention(q, k, k, 5, 2, 0.25, kernel="fa4")
    assert out is q and len(seen) == 1 and seen[0][1] is k and seen[0][3:] == (5, 2, 0.25)


GPU_READY = (
    torch.cuda.is_available()
    and torch.cuda.get_device_capability()[0] == 9
    and fa4_swa.installed_version() in fa4_swa.TESTED_VERSIONS
)
needs_fa4 = pytest.mark.skipif(
    not GPU_READY, reason="needs a Hopper GPU with flash-attn-4 (a tested version)"
)
GRAD_TOL = 5e-2  # bf16 inputs and gradients, as benchmarks/attention_speed.py checks them

# (batch, heads, kv_heads, length, dim, window, keep_first, dtype)
CASES = {
    "gqa,cut tiles": (2, 8, 2, 700, 128, 96, 10, torch.bfloat16),
    "k>W,D64": (1, 4, 1, 500, 64, 40, 120, torch.bfloat16),
    "W>=len": (1, 4, 4, 300, 128, 1000, 4, torch.bfloat16),
    "no sinks,fp16": (1, 4, 2, 400, 128, 64, 0, torch.float16),
    "W1": (1, 2, 1, 257, 128, 1, 3, torch.bfloat16),
    "W2048,k100": (1, 8, 2, 3000, 128, 2048, 100, torch.bfloat16),
    "D32": (1, 4, 2, 300, 32, 64, 4, torch.bfloat16),
}


@pytest.mark.gpu
@needs_fa4
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_float64_autograd(case):
    """out, dq, dk, dv of the one-pass path against float64 autograd through the dense rule, inputs
    in transformers' (B, L, H, D)-transposed layout."""
    batch, heads, kv_heads, length, dim, window, keep_first, dtype = case
    g = torch.Generator().manual_seed(length)
    shapes = ((batch, heads, length, dim), (batch, kv_heads, length, dim), (batch, kv_heads, length, dim))
    q, k, v = (
        torch.randn(s, generator=g)
        .to("cuda", dtype)
        .transpose(1, 2)
        .contiguous()
        .transpose(1, 2)
        .requires_grad_()
        for s in shapes
    )
    grad_out = torch.randn(q.shape, generator=g).to("cuda", dtype)
    assert fa4_swa.unusable_reason(q, k, None) is None
    scaling = dim**-0.5
    out = fa4_swa.swa_sink_attention_fa4(q, k, v, window, keep_first, scaling)
    out.backward(grad_out)
    leaves = [t.detach().cpu().double().requires_grad_() for t in (q, k, v)]
    ref, _ = dense_reference(*leaves, window, keep_first, scaling)
    ref.backward(grad_out.double().cpu())
    assert out.shape == q.shape and out.dtype == dtype
    assert float((out.detach().cpu().double() - ref).norm() / ref.norm()) < 2e-2
    for name, got, want in zip("qkv", (q.grad, k.grad, v.grad), leaves):
        assert torch.isfinite(got).all(), name
        error = float((got.cpu().double() - want.grad).norm() / want.grad.norm())
        assert error < GRAD_TOL, (name, error)


@pytest.mark.gpu
@needs_fa4
@pytest.mark.parametrize("head_dim", [64])
def test_a_training_step_takes_fa4_and_matches_the_backend_path(head_dim):
    """The ``fa4`` setting in a whole bf16 model on the GPU: every sliding layer's training call takes
    FA4, answer rows recomputed over all keys (force_fa_decode). Its loss and parameter gradients,
    against the backend's own path in float32, are as close as the backend's own path in bf16 is."""
    config = SWAAConfig(sliding_window_size=64, keep_first=4, force_fa_decode=True, non_sliding_layers=[1])
    model = apply_swaa(tiny_model("qwen3", "sdpa", head_dim=head_dim), config).cuda().train()
    ids = torch.randint(
        3, model.config.vocab_size, (2, 300), generator=torch.Generator().manual_seed(3)
    ).cuda()
    labels = ids.clone()
    labels[0, :280], labels[1, :250] = -100, -100

    def loss_and_grads(mode: str, dtype: torch.dtype):
        model.to(dtype).zero_grad()
        with fused_train(mode):
            loss = model(ids, labels=labels).loss
            loss.backward()
        return loss.detach().double(), {
            n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None
        }

    def errors(got, want) -> list[float]:
        (loss, grads), (ref_loss, ref) = got, want
        return [abs(float(loss - ref_loss)) / abs(float(ref_loss))] + [
            float((grads[n] - g).norm() / g.norm().clamp_min(1e-12)) for n, g in ref.items()
        ]

    reference = loss_and_grads("off", torch.float32)
    backend = errors(loss_and_grads("off", torch.bfloat16), reference)
    triton_swa_train.PATH_COUNTS.clear()
    fa4 = errors(loss_and_grads("fa4", torch.bfloat16), reference)
    sliding = model.config.num_hidden_layers - 1
    assert triton_swa_train.PATH_COUNTS == {"fa4": sliding, triton_swa_train.CAUSAL_TAKEN: 1}
    for name, mine, bf16 in zip(["loss", *reference[1]], fa4, backend):
        assert mine < 2 * bf16 + 1e-2, (name, mine, bf16)
