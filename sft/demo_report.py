"""Before/after accuracy table of sft/run_gpu_demo.sh (markdown, written atomically)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from swaa_patch.evaluation.io import atomic_write_text, read_jsonl


def rows(metrics: Path, stage: str) -> list[str]:
    def depths(m: dict) -> str:
        return ", ".join(f"{d}: {a:.2f}" for d, a in (m.get("accuracy_by_depth") or {}).items())

    return [f"| {stage} | {m['model_name']} | {m['config_name']} | {m['dataset']} | {m['num_samples']} "
            f"| {m['accuracy']:.3f} | {depths(m)} |" for m in read_jsonl(metrics)]


def render(before: Path, after: Path, distill: Path, sft: Path, scale: str) -> str:
    summary = json.loads(distill.read_text()) if distill.is_file() else {}
    train = json.loads(sft.read_text())["metrics"] if sft.is_file() else {}
    lines = [
        f"# Self-distillation + LoRA SFT demo ({scale}, {time.strftime('%Y-%m-%d')})",
        "",
        "Produced by `bash sft/run_gpu_demo.sh`: a small Qwen3-shaped model trained by the project on the",
        "passkey task with full attention, then evaluated with full attention and with SWA (before), and",
        "with SWA plus a LoRA adapter trained by `swaa sft` on its own full-attention answers (after).",
        "",
        "| stage | model | config | dataset | n | accuracy | accuracy by evidence depth |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows(before, "before"),
        *rows(after, "after (SWA + LoRA)"),
        "",
        f"Distillation: `{json.dumps(summary.get('datasets', {}))}`",
        "",
        f"SFT: steps {train.get('global_step')}, train loss {train.get('train_loss')}, "
        f"runtime {train.get('train_runtime')} s, total FLOPs (window-aware) {train.get('total_flos')}",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("before", "after", "distill", "sft", "out"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--scale", default="gpu")
    args = parser.parse_args()
    atomic_write_text(args.out, render(args.before, args.after, args.distill, args.sft, args.scale))


if __name__ == "__main__":
    main()
