"""SWAA's Triton split-K decode kernel against a float64 reference of masked attention.

Random queries, keys, values and validity masks (a row whose only visible slot is in one split, splits
that see no visible slot, GQA groups of 1-6, head_dims that are not powers of two, softcap), at several
split counts and slot blocks; the compiled step sees it as one op; bad input is refused by name.
Without a GPU the kernels run on Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1)."""

from __future__ import annotations

import os

import pytest
import torch

from swaa_patch.backends.triton_decode import OP_NAME, DecodeLaunch, decode_attention, split_plan

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)


def reference(q, k, v, valid, scaling, softcap=None):
    """float64 softmax over the valid slots, GQA by repeating kv heads; transformers' (B, 1, H, D)."""
    groups = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(groups, 1) for t in (k, v))
    scores = q.double() @ k.transpose(2, 3) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    return (torch.softmax(scores, -1) @ v).transpose(1, 2)


def interp(block_n, splits):
    return DecodeLaunch(block_n=block_n, num_warps=1, num_stages=1, programs_per_sm=None, splits=splits)


# (batch, heads, kv_heads, slots, head_dim, softcap, launch)
CASES = [
    (2, 4, 2, 37, 16, None, interp(16, 2)),  # last block partial
    (3, 8, 2, 100, 32, 30.0, interp(16, 5)),  # softcap; 7 blocks over 5 splits: the last split is empty
    (1, 6, 6, 64, 24, None, interp(32, 3)),  # no GQA, head_dim padded to 32
    (2, 12, 2, 50, 16, None, interp(16, 1)),  # groups of 6, one split
    (1, 4, 1, 130, 16, 5.0, interp(16, 64)),  # more splits than blocks: one block each
]


@pytest.mark.parametrize("batch, heads, kv_heads, slots, dim, softcap, launch", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_kernel_matches_float64(batch, heads, kv_heads, slots, dim, softcap, launch, dtype):
    gen = torch.Generator().manual_seed(slots)
    q = torch.randn(batch, heads, 1, dim, generator=gen)
    k, v = (torch.randn(batch, kv_heads, slots, dim, generator=gen) for _ in range(2))
    valid = torch.rand(batch, slots, generator=gen) < 0.6
    valid[0] = False
    valid[0, slots // 2] = True  # row 0 sees one slot: every other split of it is empty
    got = decode_attention(*(t.to(DEVICE, dtype) for t in (q, k, v)), valid.to(DEVICE), 0.3, softcap, launch)
    expected = reference(*(t.to(dtype) for t in (q, k, v)), valid, 0.3, softcap)
    assert got.shape == (batch, 1, heads, dim) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert (got.cpu().double() - expected).abs().max() < tol
    one = v[0, :, slots // 2].to(dtype).repeat_interleave(heads // kv_heads, 0)
    assert torch.equal(got[0, 0].cpu(), one)  # row 0's only visible slot, exactly: weight 1, empty splits 0


def test_split_plan_fills_the_gpu_and_covers_every_slot(monkeypatch):
    from swaa_patch.backends import triton_decode

    launch = DecodeLaunch(block_n=64, programs_per_sm=2)
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(triton_decode, "_sm_count", lambda index: 132)  # an H200
    assert split_plan(1, 8, 2148, launch, cuda) == (17, 128)  # 136 programs: one per SM and a few
    assert split_plan(32, 8, 2148, launch, cuda) == (2, 1088)
    assert split_plan(1, 8, 131072, launch, cuda) == (33, 4032)
    assert split_plan(1, 8, 10, launch, cuda) == (1, 64)
    for slots in (1, 63, 64, 65, 1000):
        splits, split_slots = split_plan(1, 2, slots, interp(16, 7), torch.device("cpu"))
        assert split_slots % 16 == 0 and (splits - 1) * split_slots < slots <= splits * split_slots


def test_compiled_step_sees_one_op():
    """dynamo records the kernel as one op (no graph break, no tracing into Triton code)."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    q, k, v = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 20, 16), torch.randn(1, 2, 20, 16)
    valid = torch.ones(1, 20, dtype=torch.bool)
    compiled = torch.compile(lambda *a: decode_attention(*a, 0.25) * 2, backend=record, fullgraph=True)
    torch._dynamo.reset()
    out = compiled(*(t.to(DEVICE) for t in (q, k, v, valid)))
    assert torch.allclose(out.cpu().double(), 2 * reference(q, k, v, valid, 0.25), atol=1e-5)
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert sum(OP_NAME.replace("::", ".") in t for t in targets) == 1


@pytest.mark.parametrize("change, message", [
    (dict(q=torch.randn(1, 4, 2, 16)), r"query must be \(batch, heads, 1, head_dim\)"),
    (dict(k=torch.randn(1, 3, 20, 16), v=torch.randn(1, 3, 20, 16)), r"multiple of kv heads"),
    (dict(valid=torch.ones(1, 20)), r"valid must be a bool \(batch, slots\) = \(1, 20\) mask"),
    (dict(q=torch.randn(1, 4, 1, 8), k=torch.randn(1, 2, 20, 8), v=torch.randn(1, 2, 20, 8)), r"head_dim must be in \[16, 256\]"),
    (dict(q=torch.randn(1, 4, 1, 16).double()), r"share one dtype"),
])  # fmt: skip
def test_bad_input_is_refused(change, message):
    args = dict(q=torch.randn(1, 4, 1, 16), k=torch.randn(1, 2, 20, 16), v=torch.randn(1, 2, 20, 16),
                valid=torch.ones(1, 20, dtype=torch.bool))  # fmt: skip
    args.update(change)
    with pytest.raises(ValueError, match=message):
        decode_attention(args["q"], args["k"], args["v"], args["valid"], 0.25)


def test_tuning_sweep_holds_the_shipped_launch_and_needs_a_gpu():
    """benchmarks/decode_kernel_tuning.py (run_gpu.sh decode_kernel) times LAUNCH among its sweep, so the
    table always has the shipped row; without CUDA it says where to run it instead of timing nothing."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    import decode_kernel_tuning as tuning

    from swaa_patch.backends.triton_decode import LAUNCH

    assert LAUNCH in tuning.launches()
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="run it on a GPU"):
            tuning.main(["--out", os.devnull])


def test_a_row_without_visible_slots_gets_zeros():
    """Never the case in decode (the new token is always visible), but defined: zeros, not NaN."""
    q, k, v = torch.randn(2, 4, 1, 16), torch.randn(2, 2, 40, 16), torch.randn(2, 2, 40, 16)
    valid = torch.zeros(2, 40, dtype=torch.bool)
    valid[1, 7] = True
    got = decode_attention(*(t.to(DEVICE) for t in (q, k, v, valid)), 0.25, launch=interp(16, 3)).cpu()
    assert torch.equal(got[0], torch.zeros_like(got[0]))
    assert torch.equal(got[1, 0], v[1, :, 7].repeat_interleave(2, 0))


GPU_IR_CHECK = """
import inspect, sys
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton._C.libtriton import ir
from swaa_patch.backends._triton_decode_kernel import decode_merge, decode_split_fwd

target = GPUTarget("cuda", 90, 32)  # an H100 / H200
backend = make_backend(target)
options = backend.parse_options({})
context = ir.context()
ir.load_dialects(context)
backend.load_dialects(context)
KINDS = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "VALID": "*i1", "ACC": "*fp32", "STATS": "*fp32", "OUT": "*bf16",
         "score_scale": "fp64", "post_scale": "fp64"}  # float64: what inductor passes for Python floats
for kernel, constants in (
    (decode_split_fwd, dict(GROUPS=4, BLOCK_G=16, HEAD_DIM=128, BLOCK_D=128, BLOCK_N=64, DOT_PRECISION="tf32")),
    (decode_merge, dict(GROUPS=4, HEAD_DIM=128, BLOCK_D=128, BLOCK_S=32)),
):
    names = list(inspect.signature(kernel.fn).parameters)
    for softcap in (False, True):
        values = {**constants, "SOFTCAP": softcap} if "SOFTCAP" in names else constants
        signature = {n: "constexpr" if n in values else KINDS.get(n, "i32") for n in names}
        source = ASTSource(kernel, signature, {(names.index(n),): v for n, v in values.items()})
        source.make_ir(target, options, backend.get_codegen_implementation(options), backend.get_module_map(), context)
print("ir ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU compiles the kernels for real (tests/test_static_cache.py -m gpu)")
def test_kernels_compile_to_gpu_ir_with_inductors_argument_types():
    """Triton's front end on the CPU, for an sm_90 target, with the argument types inductor gives a
    user kernel inside a compiled decode step (Python floats as float64): type errors the interpreter
    lets through (a float64 scale turned the loop's float32 max into float64 on the H200) fail here."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", GPU_IR_CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "ir ok" in result.stdout, result.stderr[-3000:]
