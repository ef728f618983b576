"""benchmarks/decode_speed.py end to end on a tiny model on the CPU: every path runs, the compiled
SWAA step (dynamo alone on a CPU) compiles once per batch size, gives the eager bounded path's
tokens and logits, and a run split in two with --resume ends in one table."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("the --tiny smoke run is for CPU machines (run_gpu.sh decode runs the real one)", allow_module_level=True)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import decode_speed  # noqa: E402


def test_tiny_run_in_two_invocations_writes_one_passing_table(tmp_path):
    out = tmp_path / "decode_speed.md"
    kernels = ("sdpa", "flex")  # the triton kernel's rows take Triton's interpreter here: tests/test_static_cache.py
    first = decode_speed.DecodeSpeedArgs(tiny=True, contexts=(40, 90), batches=(1,), eval_prompts=0, out=str(out),
                                         decode_kernels=kernels)  # fmt: skip
    assert decode_speed.main(first) == 0
    second = decode_speed.DecodeSpeedArgs(tiny=True, contexts=(40, 90), batches=(1, 3), resume=True, out=str(out),
                                          decode_kernels=kernels)  # fmt: skip
    assert decode_speed.main(second) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    # two batch-1 contexts and batch 3 (5 rows each: the compiled SWAA row once per decode kernel), the stock
    # row at SWAA's cache size
    assert len(rows) == 2 * 5 + 5 + 1
    # batch 3 x 40 tokens exceeds --tiny's one-forward prefill budget: SWAA rows prefill in chunks, stock rows say so
    assert all(row.endswith("| ok |") or "| ok (not run: stock prompts" in row for row in rows), rows
    static = [r.split(" | ") for r in rows if "StaticSWAACache" in r]
    assert [r[3].split(", ")[-1] for r in static] == ["flex decode kernel", "sdpa decode kernel"] * 3
    assert [r[0].lstrip("| ") for r in static] == ["1"] * 4 + ["2"] * 2  # run column: batch 3 is the resumed one
    # one graph per kernel (the step is one graph: the hook only announces it); context 40 -> 90 adds none
    assert [r[7] for r in static[:4]] == ["1", "1", "0", "0"]
    assert all("tokens = bounded" in r[10] for r in static)
    assert "swaa eval batching" in out.read_text()


def test_decode_profile_variants_agree_with_the_shipped_kernel(tmp_path):
    """benchmarks/decode_profile.py --tiny: every decode-attention candidate it can time gives the
    shipped static-decode kernel's first decode-step logits (float32), so a faster row is a
    correct one; the shipped kernel is checked against float64 in tests/test_static_cache.py."""
    import decode_profile

    out = tmp_path / "decode_profile.md"
    args = decode_profile.ProfileArgs(tiny=True, attention=("sdpa", "flex", "math"), out=str(out))
    assert decode_profile.main(args) == 0
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r[1] for r in rows] == ["swaa_sdpa", "stock", "swaa_flex", "swaa_math"]
    assert all(float(r[7].rstrip(" |")) < 1e-5 for r in rows if r[1] != "stock"), rows
    assert decode_profile.static_decode.static_decode_attention is decode_profile.DEFAULT_ATTENTION  # restored


def test_cold_compile_table_runs_each_path_in_a_fresh_process(tmp_path):
    """benchmarks/decode_compile_time.py --tiny: each path's decode_speed.py process gets its own empty
    inductor and Triton cache folders, and the table has its compile seconds, its median step, torch's
    compile phases, the compiled SWAA step's logits check and (--profile) the sampled functions whose
    seconds exceed stock's most."""
    import decode_compile_time

    out = tmp_path / "decode_compile_time.md"
    work = tmp_path / "work"
    argv = ["--tiny", "--paths", "stock,swaa_sdpa", "--profile", "3", "--out", str(out), "--work", str(work)]
    assert decode_compile_time.main(argv) == 0
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| stock") or line.startswith("| SWAA")]
    assert [r[0].lstrip("| ") for r in rows] == ["stock HF, StaticCache + compile",
                                                 "SWAA, StaticSWAACache + compile, sdpa decode kernel"]  # fmt: skip
    assert all(float(r[1]) > 0 and float(r[3]) > 0 and float(r[5]) > 0 and r[-1] == "ok |" for r in rows), rows  # compile s, step ms, dynamo s
    assert "teacher-forced logits" in rows[1][-2]
    caches = sorted(p.name.split("_")[1] for p in work.glob("cold_*"))
    assert caches == ["stock", "swaa"] and all((p / "inductor").is_dir() for p in work.glob("cold_*"))
    text = out.read_text()
    for column in ("cumulative", "self"):
        table = text.split(f"Sampled {column} seconds per function")[1].split("\n\n")[1].splitlines()
        assert table[0] == "| function | stock | swaa_sdpa |" and len(table) == 2 + 3
    # the whole run is sampled: decode_speed's main is on the stack of the process's largest share
    samples = json.loads((work / "swaa_sdpa.samples.json").read_text())
    assert samples["cumulative"]["benchmarks/decode_speed.py:main"] == pytest.approx(max(samples["cumulative"].values()))
