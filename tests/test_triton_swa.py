"""The Triton SWA+sink forward kernel against a float64 dense implementation of the rule written
here (it imports nothing of swaa_patch's rule or backends). Without a GPU the kernel runs on
Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before anything imports
triton); on a CUDA machine the same tests check the compiled kernel.

Tiny blocks (a test-only KernelConfig) make small shapes cross many block boundaries: windows
shorter and longer than a block, sink ranges inside, across and beyond the window's blocks,
lengths that are not block multiples, offsets (queries after a cache), GQA, softcap, strided
inputs. bf16 is not checked on CPU: the interpreter's ``tl.dot`` mis-reads bf16 operands (triton
3.9); fp16 stands in for the low-precision path, and bf16 is checked on the GPU by
``benchmarks/attention_speed.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the Triton SWA kernel cannot be tested")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from swaa_patch.backends.triton_swa import KernelConfig, merge_sinks, row_view, swa_sink_attention  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "no GPU and TRITON_INTERPRET is not 1 (tests/conftest.py sets it before triton is imported)",
        allow_module_level=True,
    )

TINY = KernelConfig(block_m=16, block_n=16, num_warps=1, num_stages=1)
TALL = KernelConfig(block_m=32, block_n=16, num_warps=1, num_stages=1)
FP32_TOL = 1e-5


def dense_reference(q, k, v, window, keep_first, scaling, softcap=None, offset=0):
    """float64 softmax over the keys the rule allows: j <= i and (i - j < W or j < keep_first)."""
    q, k, v = q.cpu().double(), k.cpu().double(), v.cpu().double()
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    i = torch.arange(q.shape[2])[:, None] + offset
    j = torch.arange(k.shape[2])[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & ((i - j < window) | (j < keep_first))
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.einsum("bhij,bhjd->bhid", torch.softmax(scores, dim=-1), v), lse


def rel(out, ref):
    return float((out.cpu().double() - ref).norm() / ref.norm())


def random_qkv(batch, heads, kv_heads, q_len, k_len, dim, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, dim, generator=g).to(DEVICE, dtype)
    k = torch.randn(batch, kv_heads, k_len, dim, generator=g).to(DEVICE, dtype)
    v = torch.randn(batch, kv_heads, k_len, dim, generator=g).to(DEVICE, dtype)
    return q, k, v


def check(q, k, v, window, keep_first, softcap=None, offset=0, config=TINY, tol=FP32_TOL, tma=False):
    scaling = q.shape[-1] ** -0.5
    out, lse = swa_sink_attention(
        q, k, v, window, keep_first, scaling, softcap, offset, config=config, tma=tma
    )
    ref, ref_lse = dense_reference(q, k, v, window, keep_first, scaling, softcap, offset)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == q.shape[:3]
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert rel(out, ref) < tol
    assert rel(lse, ref_lse) < tol


# (batch, heads, kv_heads, q_len, k_len, offset, dim, window, keep_first, softcap, config)
CASES = {
    "W<block,no-sink": (2, 2, 2, 37, 37, 0, 16, 5, 0, None, TINY),
    "W>block,k1,gqa": (1, 4, 2, 50, 50, 0, 32, 20, 1, None, TINY),
    "k5,D64": (1, 2, 1, 45, 45, 0, 64, 7, 5, None, TINY),
    "k>W,k>block": (1, 2, 1, 53, 53, 0, 16, 6, 40, None, TINY),
    "k=block": (1, 2, 1, 61, 61, 0, 16, 9, 16, None, TINY),
    "W1": (1, 2, 2, 40, 40, 0, 16, 1, 3, None, TINY),
    "W=block+1,tall": (1, 2, 1, 70, 70, 0, 32, 17, 3, None, TALL),
    "full-causal": (1, 2, 1, 33, 33, 0, 16, None, 0, None, TINY),
    "W>=len": (1, 2, 1, 29, 29, 0, 16, 100, 4, None, TINY),
    "k>=len": (1, 2, 1, 29, 29, 0, 16, 3, 1000, None, TINY),
    "offset": (1, 2, 1, 23, 60, 37, 32, 9, 3, None, TINY),
    "offset,unaligned,tall": (2, 4, 1, 19, 58, 39, 16, 12, 21, None, TALL),
    "keys-after-queries": (1, 2, 1, 10, 40, 20, 16, 4, 2, None, TINY),
    "softcap": (1, 2, 1, 40, 40, 0, 16, 6, 25, 2.0, TINY),
    "softcap,offset,gqa": (1, 4, 2, 25, 47, 22, 32, 11, 4, 5.0, TINY),
    "single-query": (1, 2, 1, 1, 33, 32, 16, 8, 2, None, TINY),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_dense_reference(case):
    batch, heads, kv_heads, q_len, k_len, offset, dim, window, keep_first, softcap, config = case
    q, k, v = random_qkv(batch, heads, kv_heads, q_len, k_len, dim, seed=q_len * 131 + k_len)
    if softcap is not None:
        q = q * 3  # scores large enough for the cap to bend them
    check(q, k, v, window, keep_first, softcap, offset, config)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_tma_path_matches_dense_reference(case):
    """The same cases with Q/K/V read through TMA descriptors (the interpreter emulates them)."""
    batch, heads, kv_heads, q_len, k_len, offset, dim, window, keep_first, softcap, config = case
    q, k, v = random_qkv(batch, heads, kv_heads, q_len, k_len, dim, seed=q_len * 131 + k_len)
    if softcap is not None:
        q = q * 3
    check(q, k, v, window, keep_first, softcap, offset, config, tma=True)


def check_merged(q, k, v, window, keep_first, softcap=None, offset=0, tol=FP32_TOL, config=None):
    """Window-only attention (the kernel with no sinks, standing in for cuDNN's sliding window),
    then ``merge_sinks``: must equal the rule's SWA+sink attention."""
    scaling = q.shape[-1] ** -0.5
    out, lse = swa_sink_attention(q, k, v, window, 0, scaling, softcap, offset, config=TINY)
    merged, merged_lse = merge_sinks(
        q, k, v, out, lse, window, keep_first, scaling, softcap, offset, config=config
    )
    assert merged is out and merged_lse is lse  # in place
    ref, ref_lse = dense_reference(q, k, v, window, keep_first, scaling, softcap, offset)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert rel(out, ref) < tol
    assert rel(lse, ref_lse) < tol


@pytest.mark.parametrize(
    "case",
    [c for c in CASES.values() if c[7] is not None],
    ids=[n for n, c in CASES.items() if c[7] is not None],
)
def test_sink_merge_completes_a_window_only_result(case):
    batch, heads, kv_heads, q_len, k_len, offset, dim, window, keep_first, softcap, _ = case
    q, k, v = random_qkv(batch, heads, kv_heads, q_len, k_len, dim, seed=q_len * 131 + k_len)
    if softcap is not None:
        q = q * 3
    check_merged(q, k, v, window, keep_first, softcap, offset)


def test_sink_merge_on_transposed_layouts_and_long_rows():
    """transformers' (B, L, H, D) layouts, and more q blocks than the merge skips (rows < W)."""
    q, k, v = (
        t.transpose(1, 2).contiguous().transpose(1, 2) for t in random_qkv(2, 4, 2, 150, 150, 16, seed=19)
    )
    check_merged(q, k, v, 40, 7)
    check_merged(q, k, v, 3, 70)
    check_merged(q, k, v, 40, 7, config=TALL)  # an explicit launch config (merge_tuning.py's sweep)


def test_sink_merge_without_sinks_or_beyond_the_keys_is_a_no_op():
    q, k, v = random_qkv(1, 2, 1, 40, 40, 16, seed=23)
    out, lse = swa_sink_attention(q, k, v, 9, 0, 0.25, config=TINY)
    before = out.clone(), lse.clone()
    merge_sinks(q, k, v, out, lse, 9, 0, 0.25)
    merge_sinks(q, k, v, out, lse, 100, 5, 0.25)  # every sink inside every window
    assert torch.equal(out, before[0]) and torch.equal(lse, before[1])
    with pytest.raises(ValueError, match="lse be float32"):
        merge_sinks(q, k, v, out, lse.double(), 9, 3, 0.25)


def test_tma_rows_past_a_sequence_never_leak():
    """In a row view, the rows after one sequence's last key are the next batch row's keys (or,
    contiguous, the next head's). Make those huge: a masked block that let them in would show."""
    q, k, v = random_qkv(2, 4, 2, 37, 37, 16, seed=11)
    k[1] *= 100.0
    v[1] *= 1000.0
    for layout in ("contiguous", "transposed"):
        if layout == "transposed":  # transformers' (B, L, H, D) transposed: heads side by side in a row
            q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
        check(q, k, v, 9, 3, tma=True)
        check(q, k, v, None, 0, tma=True)


def test_row_view_addresses_every_element():
    """row_view's formula finds every element of the layouts transformers produces."""
    layouts = {
        "contiguous": torch.randn(2, 3, 5, 16),
        "transposed": torch.randn(2, 5, 3, 16).transpose(1, 2),
        "one batch, sliced keys": torch.randn(1, 9, 3, 16).transpose(1, 2)[:, :, 2:],
    }
    for name, t in layouts.items():
        view = row_view(t)
        assert view is not None, name
        flat = t.as_strided((view.rows, view.row_len), (view.row_len, 1))
        for b, h, pos in [(0, 0, 0), (1, 2, 4), (0, 2, 1), (t.shape[0] - 1, 1, t.shape[2] - 1)]:
            if b >= t.shape[0]:
                continue
            row = b * view.row_b + h * view.row_h + pos
            col = b * view.col_b + h * view.col_h
            assert torch.equal(flat[row, col : col + 16], t[b, h, pos]), (name, b, h, pos)


def test_tma_refuses_or_skips_layouts_without_a_row_view():
    """Batched keys sliced out of a longer buffer have gaps (rows that belong to no sequence, maybe
    uninitialised): no row view. tma=True says so; the default quietly uses pointer loads."""
    q, k, v = random_qkv(2, 2, 1, 12, 12, 16)
    k_buf, v_buf = (torch.randn(2, 1, 20, 16, device=DEVICE) for _ in range(2))
    k_buf[:, :, :12], v_buf[:, :, :12] = k, v
    k_gap, v_gap = k_buf[:, :, :12], v_buf[:, :, :12]
    assert row_view(k_gap) is None and row_view(k[:, :, :, :8]) is None
    with pytest.raises(ValueError, match="tma=True"):
        swa_sink_attention(q, k_gap, v_gap, 4, 1, 0.25, config=TINY, tma=True)
    check(q, k_gap, v_gap, 4, 1, tma=None)


def test_default_launch_config():
    """The block sizes the GPU autotuner chooses from (BLOCK_M=128), on a few q blocks."""
    q, k, v = random_qkv(1, 2, 1, 300, 300, 32, seed=3)
    check(q, k, v, 70, 10, config=KernelConfig())


def test_strided_inputs():
    """transformers hands over (B, L, H, D) tensors transposed to (B, H, L, D): strides, no copy."""
    q, k, v = (
        t.transpose(1, 2).contiguous().transpose(1, 2) for t in random_qkv(2, 4, 2, 35, 35, 16, seed=5)
    )
    assert not q.is_contiguous()
    check(q, k, v, 7, 3)


def test_float16():
    q, k, v = random_qkv(1, 2, 1, 50, 50, 32, dtype=torch.float16, seed=7)
    check(q, k, v, 7, 3, tol=2e-3)


@settings(max_examples=12, deadline=None)
@given(
    q_len=st.integers(1, 48),
    extra_keys=st.integers(0, 20),
    window=st.one_of(st.none(), st.integers(1, 40)),
    keep_first=st.integers(0, 40),
    groups=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_random_shapes(q_len, extra_keys, window, keep_first, groups, seed):
    k_len = q_len + extra_keys
    offset = seed % (extra_keys + 1)  # keys after the last query (offset < extra_keys) stay unseen
    q, k, v = random_qkv(1, groups, 1, q_len, k_len, 16, seed=seed)
    check(q, k, v, window, keep_first, offset=offset)


@pytest.mark.parametrize(
    "shapes, kwargs, message",
    [
        (((1, 2, 8, 48), (1, 1, 8, 48)), {}, "head_dim 48"),
        (((1, 3, 8, 16), (1, 2, 8, 16)), {}, "multiple of kv heads"),
        (((1, 2, 8, 16), (1, 1, 8, 16)), {"offset": 1}, "exceeds k_len"),
        (((1, 2, 8, 16), (1, 1, 8, 16)), {"window": 0}, "window must be"),
        (((1, 2, 8, 16), (1, 1, 8, 16)), {"keep_first": -1}, "keep_first"),
        (((2, 2, 8, 16), (1, 1, 8, 16)), {}, "batch"),
    ],
)
def test_unsupported_inputs_are_refused(shapes, kwargs, message):
    q, k = torch.randn(shapes[0], device=DEVICE), torch.randn(shapes[1], device=DEVICE)
    args = dict(window=4, keep_first=1, scaling=0.25) | kwargs
    with pytest.raises(ValueError, match=message):
        swa_sink_attention(q, k, k.clone(), config=TINY, **args)


def test_mixed_dtypes_are_refused():
    q, k, v = random_qkv(1, 2, 1, 8, 8, 16)
    with pytest.raises(ValueError, match="one dtype"):
        swa_sink_attention(q, k.half(), v, 4, 1, 0.25, config=TINY)


def test_missing_triton_is_reported_at_call_time():
    """``import swaa_patch`` and this module import without triton; a call names the install."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, swaa_patch\n"
        "from swaa_patch.backends.triton_swa import swa_sink_attention\n"
        "q = torch.randn(1, 1, 4, 16)\n"
        "try:\n"
        "    swa_sink_attention(q, q, q, 2, 1, 0.25)\n"
        "except ImportError as err:\n"
        "    print('ImportError:', err)\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "ImportError: the Triton SWA kernel needs the triton package" in result.stdout
