"""The launch sweeps' shared driver (benchmarks/train_kernel_tuning.py's ``variants``, ``best_config`` and
``sweep_sizes``, used by it and by cudnn_tail_tuning.py) on the CPU with a fake bench: every swept value
gets one row, the best row combines each field's fastest correct value, and both scripts' sweeps and
row labels plug in. The GPU timing itself runs in ``bash benchmarks/run_gpu.sh train_tuning / cudnn_tail``."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass

import pytest

pytest.importorskip("triton", reason="the tuning scripts import the Triton kernels' module")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))

import cudnn_tail_tuning  # noqa: E402
import train_kernel_tuning  # noqa: E402
from train_kernel_tuning import best_config, sweep_sizes, variants  # noqa: E402

from swaa_patch.backends.triton_swa_train import GPU_CONFIG, FusedTail, Launch  # noqa: E402


@dataclass
class FakeRow:
    n: int
    label: str
    config: object
    ms: float
    ok: bool = True


class FakeBench:
    """Times a config by a made-up cost: wider dQ query blocks (then narrower key blocks), wider dK/dV key
    blocks, and a one-pass sink tail with more q blocks per program, fewer rows and fewer warps are faster
    (the two-kernel tail slowest); ``broken`` launches are not ok."""

    def __init__(self, args, n, prefix, broken):
        self.n, self.prefix, self.broken = n, prefix, broken

    def fixed_rows(self):
        return [FakeRow(self.n, "baseline", None, 100.0)]

    def row(self, field, config):
        fused = config.fused_tail
        tail = 100.0
        if fused is not None:
            tail = 50.0 / fused.chunk_blocks + fused.launch.block_m / 100 + fused.launch.num_warps / 100
        ms = 1000.0 / config.dq.block_m + 10.0 / config.dq.block_n + 1000.0 / config.dkdv.block_n + tail + self.n / 1e4
        ok = config.dq not in self.broken and fused not in self.broken
        return FakeRow(self.n, self.prefix + field, config, ms, ok=ok)


@dataclass
class Args:
    sizes: tuple[int, ...]


def fields_differing(config):
    return {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(GPU_CONFIG, f.name)}


def test_variants_vary_one_field_each_and_take_launches_and_objects():
    out = variants()
    assert out[0] == ("shipped", GPU_CONFIG)
    for field, config in out[1:]:
        assert field in train_kernel_tuning.SWEEP and fields_differing(config) == {field}
        assert isinstance(getattr(config, field), Launch)  # swept as (block_m, block_n, warps, stages)
    assert [f for f, _ in out][1:] == [f for f, vs in train_kernel_tuning.SWEEP.items() for v in vs
                                       if getattr(GPU_CONFIG, f) != Launch(*v)]  # fmt: skip
    tails = variants(cudnn_tail_tuning.SWEEP)[1:]
    assert all(fields_differing(c) == {"fused_tail"} for _, c in tails)
    assert [c.fused_tail for _, c in tails].count(None) == 1  # the two-kernel tail, as a value of its own
    assert all(isinstance(c.fused_tail, FusedTail) for _, c in tails if c.fused_tail is not None)
    assert GPU_CONFIG.fused_tail not in [c.fused_tail for _, c in tails]  # the shipped one is the `shipped` row


CASES = {
    # the fastest dQ launch by the fake cost is broken: the next (the shipped one, first among equals); the
    # widest dK/dV key blocks: the first swept; the tail's cost does not vary, so the shipped one
    "train_kernel_tuning": (train_kernel_tuning.SWEEP, "", {Launch(128, 128, 8, 2)},
                            dict(dq=GPU_CONFIG.dq, dkdv=Launch(32, 128, 4, 3), tail=GPU_CONFIG.tail)),
    # chunks of 8 q blocks are fastest by the fake cost but broken: 4 with the fewest rows and warps
    "cudnn_tail_tuning": (cudnn_tail_tuning.SWEEP, "tail: ", {FusedTail(Launch(64, 128, 16, 2), 8)},
                          dict(fused_tail=FusedTail(Launch(32, 128, 8, 2), 4))),
}


@pytest.mark.parametrize("case", CASES)
def test_sweep_sizes_rows_per_length_and_the_best_combination(case):
    sweep, prefix, broken, expected = CASES[case]
    shown = []
    rows = sweep_sizes(Args((1000, 2000)), lambda args, n: FakeBench(args, n, prefix, broken), sweep,
                       lambda rows: shown.append(len(rows)), varied=lambda r: r.label.removeprefix(prefix))  # fmt: skip
    per_length = 1 + len(variants(sweep)) + 1
    assert len(rows) == 2 * per_length and len(shown) == 2 * (per_length - 1)
    for n in (1000, 2000):
        best = [r for r in rows if r.n == n and r.label == prefix + "best"]
        assert len(best) == 1
        config = best[0].config
        assert config == dataclasses.replace(GPU_CONFIG, **expected)
        assert best_config(rows, n, sweep, lambda r: r.label.removeprefix(prefix)) == config
