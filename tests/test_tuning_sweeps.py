"""The launch sweeps' shared driver (benchmarks/train_kernel_tuning.py's ``variants``, ``best_config`` and
``sweep_sizes``, used by it and by cudnn_tail_tuning.py) on the CPU with a fake bench: every swept value
gets one row, the best row combines each field's fastest correct value, and both scripts' sweeps and
row labels plug in; cudnn_plans.py's report helpers. The GPU timing itself runs in ``bash benchmarks/run_gpu.sh
train_tuning / cudnn_tail / cudnn_plans``."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import pytest

pytest.importorskip("triton", reason="the tuning scripts import the Triton kernels' module")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))

import cudnn_tail_tuning  # noqa: E402
import train_kernel_tuning  # noqa: E402
from train_kernel_tuning import best_config, sweep_sizes, variants  # noqa: E402

from swaa_patch.backends.triton_swa_train import GPU_CONFIG, Launch  # noqa: E402


@dataclass
class FakeRow:
    n: int
    label: str
    config: object
    ms: float
    ok: bool = True


class FakeBench:
    """Times a config by a made-up cost: larger tail_dq.block_n and larger chunk_blocks are faster;
    ``broken`` launches are not ok."""

    def __init__(self, args, n, prefix, broken):
        self.n, self.prefix, self.broken = n, prefix, broken

    def fixed_rows(self):
        return [FakeRow(self.n, "baseline", None, 100.0)]

    def row(self, field, config):
        ms = 1000.0 / config.tail_dq.block_n + 100.0 / config.chunk_blocks + self.n / 1000
        return FakeRow(self.n, self.prefix + field, config, ms, ok=config.tail_dq not in self.broken)


@dataclass
class Args:
    sizes: tuple[int, ...]


def test_variants_vary_one_field_each_and_take_launches_and_numbers():
    out = variants(cudnn_tail_tuning.SWEEP)
    assert out[0] == ("shipped", GPU_CONFIG)
    fields = {"tail_dq", "tail", "chunk_blocks", "pair_sinks"}
    assert set(cudnn_tail_tuning.SWEEP) == fields
    for field, config in out[1:]:
        assert field in fields and config != GPU_CONFIG
        differing = {f for f in fields if getattr(config, f) != getattr(GPU_CONFIG, f)}
        assert differing == {field}
    assert any(isinstance(c.chunk_blocks, int) and c.chunk_blocks == 32 for _, c in out)
    assert [c.pair_sinks for f, c in out if f == "pair_sinks"] == [False]  # a flag: the shipped value is not repeated
    assert all(isinstance(c.tail_dq, Launch) for _, c in out)
    assert [f for f, _ in variants()][1:] == [f for f, vs in train_kernel_tuning.SWEEP.items() for v in vs
                                              if getattr(GPU_CONFIG, f) != Launch(*v)]  # fmt: skip


@pytest.mark.parametrize("prefix", ["", "tail: "])
def test_sweep_sizes_rows_per_length_and_the_best_combination(prefix):
    broken = {Launch(128, 128, 8, 2)}  # as fast as the pick by the fake cost and swept first, but not ok
    shown = []
    rows = sweep_sizes(Args((1000, 2000)), lambda args, n: FakeBench(args, n, prefix, broken),
                       cudnn_tail_tuning.SWEEP, lambda rows: shown.append(len(rows)),
                       varied=lambda r: r.label.removeprefix(prefix))  # fmt: skip
    per_length = 1 + len(variants(cudnn_tail_tuning.SWEEP)) + 1
    assert len(rows) == 2 * per_length and len(shown) == 2 * (per_length - 1)
    for n in (1000, 2000):
        best = [r for r in rows if r.n == n and r.label == prefix + "best"]
        assert len(best) == 1
        config = best[0].config
        assert config.tail_dq == Launch(64, 128, 8, 2)  # the one ok launch with block_n 128
        assert config.chunk_blocks == 32 and config.tail == GPU_CONFIG.tail
        assert best_config(rows, n, cudnn_tail_tuning.SWEEP, lambda r: r.label.removeprefix(prefix)) == config


def test_cudnn_plans_reports_refused_knob_values_as_ranges_and_rows_against_the_shipped_op():
    import cudnn_plans

    assert cudnn_plans.value_ranges([7, 0, 1, 2, 5, 8]) == "0-2, 5, 7-8"
    assert cudnn_plans.value_ranges([*range(0, 26), *range(27, 64)]) == "0-25, 27-63"
    shipped = cudnn_plans.Row(1024, "bwd", "shipped: op", 10.0, "dq 1e-03", True)
    faster = cudnn_plans.Row(1024, "bwd", "#1 eng", 8.0, "dq 1e-03", True)
    other_pass = cudnn_plans.Row(1024, "fwd", "#0 eng", 4.0, "out 1e-03", False)
    rows = [shipped, faster, other_pass]
    assert "| 8.000 | 1.250x |" in cudnn_plans.format_row(faster, rows)
    assert cudnn_plans.format_row(other_pass, rows).endswith("| - | out 1e-03 | FAIL |")  # no fwd op row to compare
    assert cudnn_plans.kernel_cfg_range("0-63") == range(0, 64)
    for bad in ("63-0", "abc", "5", "-1-3"):
        with pytest.raises(argparse.ArgumentTypeError, match="must be LOW-HIGH"):
            cudnn_plans.kernel_cfg_range(bad)
