"""cuDNN's sliding window + the Triton sink merge (``cudnn_swa.py``) against the float64 dense
reference of tests/test_triton_swa.py, on the GPU with cudnn-frontend installed (skipped elsewhere;
the dispatch into this path is tested on the CPU with a stand-in band in tests/test_fused_prefill.py,
and the merge kernel itself in tests/test_triton_swa.py)."""

from __future__ import annotations

import pytest
import torch

from swaa_patch.backends import cudnn_swa

if not torch.cuda.is_available() or not cudnn_swa.frontend_available():
    pytest.skip("needs a CUDA GPU and cudnn-frontend", allow_module_level=True)

from test_triton_swa import dense_reference, random_qkv, rel  # noqa: E402

BF16_TOL = 2e-2

# (batch, heads, kv_heads, q_len, k_len, dim, window, keep_first)
CASES = {
    "prompt,gqa": (2, 8, 2, 700, 700, 128, 96, 10),
    "k>W": (1, 4, 1, 500, 500, 64, 40, 120),
    "W>=len": (1, 4, 4, 300, 300, 128, 1000, 4),
    "W1": (1, 2, 1, 257, 257, 128, 1, 3),
    "chunk-after-cache": (1, 8, 2, 256, 900, 128, 128, 16),
    "W2048,k100": (1, 8, 2, 3000, 3000, 128, 2048, 100),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_dense_reference(case):
    batch, heads, kv_heads, q_len, k_len, dim, window, keep_first = case
    q, k, v = random_qkv(batch, heads, kv_heads, q_len, k_len, dim, torch.bfloat16, seed=q_len + k_len)
    offset = k_len - q_len
    assert cudnn_swa.unusable_reason(q, k, None, offset) is None
    scaling = dim**-0.5
    out, lse = cudnn_swa.swa_sink_attention_cudnn(q, k, v, window, keep_first, scaling, offset)
    ref, ref_lse = dense_reference(q, k, v, window, keep_first, scaling, offset=offset)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert rel(out, ref) < BF16_TOL
    assert rel(lse, ref_lse) < 1e-3


def test_transformers_layout_keeps_its_strides():
    """q, k, v as transformers hands them over ((B, L, H, D) transposed): out comes back in q's
    layout, so the prefill path returns out.transpose(1, 2) without a copy."""
    q, k, v = (
        t.transpose(1, 2).contiguous().transpose(1, 2)
        for t in random_qkv(1, 8, 2, 512, 512, 128, torch.bfloat16)
    )
    out, _ = cudnn_swa.swa_sink_attention_cudnn(q, k, v, 64, 8, 128**-0.5)
    assert out.transpose(1, 2).is_contiguous()
    ref, _ = dense_reference(q, k, v, 64, 8, 128**-0.5)
    assert rel(out, ref) < BF16_TOL


# (batch, heads, kv_heads, length, dim, window, keep_first): training calls (queries = keys)
TRAIN_CASES = {
    "gqa,tail": (2, 8, 2, 700, 128, 96, 10),
    "k>W": (1, 4, 1, 500, 64, 40, 120),
    "W>=len": (1, 4, 4, 300, 128, 1000, 4),
    "no sinks": (1, 4, 2, 400, 128, 64, 0),
    "W2048,k100": (1, 8, 2, 3000, 128, 2048, 100),
}
GRAD_TOL = 5e-2  # bf16 inputs and gradients, as benchmarks/attention_speed.py checks them


@pytest.mark.parametrize("case", TRAIN_CASES.values(), ids=TRAIN_CASES.keys())
def test_training_gradients_match_float64_autograd(case):
    """The training path of ``triton_swa_train`` through cuDNN (band forward + merge, cuDNN's band
    backward fed the merged out and lse, the Triton sink tail): out, dq, dk, dv against float64
    autograd through the dense rule, inputs in transformers' (B, L, H, D)-transposed layout."""
    from swaa_patch.backends.triton_swa_train import trainable_swa_sink_attention

    batch, heads, kv_heads, length, dim, window, keep_first = case
    q, k, v = (
        t.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
        for t in random_qkv(batch, heads, kv_heads, length, length, dim, torch.bfloat16, seed=length)
    )
    grad_out = torch.randn_like(q)
    scaling = dim**-0.5
    out = trainable_swa_sink_attention(q, k, v, window, keep_first, scaling, kernel="cudnn")
    out.backward(grad_out)
    leaves = [t.detach().cpu().double().requires_grad_() for t in (q, k, v)]
    ref, _ = dense_reference(*leaves, window, keep_first, scaling)
    ref.backward(grad_out.double().cpu())
    assert rel(out.detach(), ref.detach()) < BF16_TOL
    for name, got, want in zip("qkv", (q.grad, k.grad, v.grad), leaves):
        assert torch.isfinite(got).all(), name
        assert rel(got, want.grad) < GRAD_TOL, (name, rel(got, want.grad))
