"""GPU correctness of every SWAA attention path in bf16, against a float64 reference.

Kernel level: random q/k/v with left padding, through the real backends (flex compiled, sdpa
chunked, eager, flash if flash-attn is installed) driven by an AttentionPlan, versus a dense
float64 attention whose mask is written here independently from background.md's rule.
Model level: a small random Qwen3 / Gemma2 in bf16 on the GPU versus the float64 reference model
of tests/reference.py, for prefill and greedy generation.

Writes a markdown table (device, versions, shapes, errors) to --out.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from types import SimpleNamespace

import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from swaa_patch import SWAAConfig, apply_swaa, hack_hf_swaa  # noqa: E402
from swaa_patch.backends import BACKENDS, AttentionCall, run_attention  # noqa: E402
from swaa_patch.jobs.io import atomic_write_text  # noqa: E402
from swaa_patch.plan import build_plan  # noqa: E402


def dense_reference(q, k, v, valid, window, keep_first, scaling):
    """float64 attention with the rule written out densely (independent of swaa_patch.rule)."""
    b, h, n, d = q.shape
    groups = h // k.shape[1]
    k = k.double().repeat_interleave(groups, 1)
    v = v.double().repeat_interleave(groups, 1)
    pos = valid.long().cumsum(-1) - 1
    i, j = pos[:, :, None], pos[:, None, :]
    allowed = (j <= i) & valid[:, None, :] & valid[:, :, None]
    allowed &= ((i - j) < window) | (j < keep_first)
    scores = torch.einsum("bhid,bhjd->bhij", q.double(), k) * scaling
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    return torch.einsum("bhij,bhjd->bihd", probs, v)


class Table:
    """The results table, rewritten after every row (a run cut short by its time limit keeps the
    rows it finished) and each row printed as it lands."""

    def __init__(self, out: str) -> None:
        self.out, self.rows = out, []

    def append(self, row: tuple[str, str, str, str]) -> None:
        self.rows.append(row)
        print("| " + " | ".join(row) + " |", flush=True)
        atomic_write_text(self.out, self.text())

    def text(self) -> str:
        header = [
            "# GPU correctness of SWAA attention paths (bf16 vs float64 reference)",
            "",
            f"- date: {datetime.date.today()}",
            f"- device: {torch.cuda.get_device_name()}",
            f"- torch {torch.__version__}, transformers {transformers.__version__}",
            "- error: relative L2 error ||out - ref|| / ||ref|| over real (non-padding) tokens",
            "",
            "| path | shape | rel. error | verdict |",
            "| --- | --- | --- | --- |",
        ]
        return "\n".join(header + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]) + "\n"


def kernel_rows(device, rows: Table) -> None:
    # the last case is large enough (n^2 > 2^24) for the compiled create_block_mask path
    for n, window, keep, b, h, hk in [
        (1000, 128, 16, 2, 8, 2),
        (4096, 512, 64, 2, 8, 2),
        (12288, 2048, 100, 1, 4, 1),
    ]:
        d = 128
        g = torch.Generator(device=device).manual_seed(n)
        q = torch.randn(b, h, n, d, device=device, generator=g, dtype=torch.bfloat16)
        k = torch.randn(b, hk, n, d, device=device, generator=g, dtype=torch.bfloat16)
        v = torch.randn(b, hk, n, d, device=device, generator=g, dtype=torch.bfloat16)
        valid = torch.ones(b, n, dtype=torch.bool, device=device)
        valid[b - 1, : n // 7] = False
        scaling = d**-0.5
        ref = dense_reference(q, k, v, valid, window, keep, scaling)
        config = SWAAConfig(sliding_window_size=window, keep_first=keep, query_chunk_size=512)
        plan = build_plan(config, batch_size=b, q_len=n, device=device, attention_mask=valid.long())
        module = SimpleNamespace(layer_idx=0, training=False)
        for name in BACKENDS:
            try:
                out, _ = run_attention(name, AttentionCall(module, q, k, v, plan, scaling))
            except ImportError as err:
                rows.append(
                    (f"kernel {name}", f"n={n} W={window} k={keep}", "skipped", str(err).split(":")[0])
                )
                continue
            err = rel(out, ref, valid)
            rows.append(
                (
                    f"kernel {name}",
                    f"n={n} W={window} k={keep} B={b} H={h}/{hk} D={d}",
                    f"{err:.2e}",
                    "ok" if err < 2e-2 and not out.isnan().any() else "FAIL",
                )
            )


def rel(out, ref, valid):
    out, ref = out.double()[valid], ref[valid]
    return float((out - ref).norm() / ref.norm())


def model_rows(device, rows: Table) -> None:
    from reference import RefRule, generate_with_reference, reference_model
    from tiny import tiny_model

    for family, attn in [
        ("qwen3", "flex_attention"),
        ("qwen3", "sdpa"),
        ("gemma2", "flex_attention"),
        ("llama", "eager"),
    ]:
        model = tiny_model(family, attn)
        ref = reference_model(model).to(device)
        config = SWAAConfig(sliding_window_size=8, keep_first=4, force_fa_decode=True, non_sliding_layers=[1])
        rule = RefRule(8, 4, True, (1,))
        model = apply_swaa(model.to(device, torch.bfloat16), config)
        ids = torch.randint(3, 90, (2, 48), device=device)
        valid = torch.ones_like(ids, dtype=torch.bool)
        valid[1, :9] = False
        got, expected, sequences = generate_with_reference(model, ref, rule, ids, valid, 24)
        err = float((got.double() - expected).norm() / expected.norm())
        agree = float((expected.argmax(-1) == sequences[:, 48:]).float().mean())
        rows.append(
            (
                f"model {family} {attn} bf16",
                "B=2 prompt 48 (+pad) gen 24, W=8 k=4 fad nsl=[1]",
                f"{err:.2e}",
                f"greedy agreement {agree:.0%}" + (" ok" if err < 5e-2 else " FAIL"),
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/gpu_correctness.md")
    args = parser.parse_args()
    hack_hf_swaa()
    device = torch.device("cuda")
    rows = Table(args.out)
    kernel_rows(device, rows)
    model_rows(device, rows)
    print(rows.text())
    if any("FAIL" in row[3] for row in rows.rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
