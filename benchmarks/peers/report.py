"""Write benchmarks/results/peers_demo.md from the JSON rows of swaa_rows.py and kvpress_rows.py.

    python benchmarks/peers/report.py SWAA.json KVPRESS.json --out FILE.md --command CMD --seconds S
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from measure import MAX_NEW_TOKENS, TASKS

KIND_LABEL = {"baseline": "baseline", "swaa": "SWAA", "peer": "**peer**", "peer-env baseline": "baseline (peer env)"}
BUDGET_TEXT = {
    "same": """\
- KV budget: SWAA's bounded layers keep 4 sinks + the newest 63 keys (W - 1; the query is the
  64th), whatever the context length. The StreamingLLM press keeps 4 sinks + the 64 most recent
  prompt keys after a **full-attention prefill** and does not evict while decoding, so each decoded
  token adds one more key. `force_fa_decode` rows keep every key on every layer (decode attends to
  the whole cache): they trade the KV saving for accuracy; their saving is the O(n·W) prefill.
""",
    "half": """\
- KV budget: about half of full attention's. SWAA's layer sets keep every key on 2 of the 4 layers
  and 4 sinks + the newest 63 keys on the other 2 (no `force_fa_decode`); the calibrated set is the
  one `swaa calibrate settings/demo_calibrate.json` picks. Each press keeps ceil(n / 2 + 33.5) of
  the n prompt keys on every layer after a **full-attention prefill** (kvpress_rows.half_budget_kept:
  the same total as the SWAA rows, rounded up for the peers) and adds decoded tokens without
  evicting, as SWAA's full layers do.
""",
}
PROTOCOL = f"""\
## Protocol

- Samples: the held-out samples of `swaa eval settings/demo.json` (task seed 0; prompts of 512 and
  1,024 tokens, evidence depth 0.1 / 0.5 / 0.9), as shipped in `eval/lm_eval/swaa_demo/data/`.
  Each goes through the demo model's chat template as one user turn; greedy, {MAX_NEW_TOKENS} new
  tokens, batch 1, float32, sdpa, `model.generate`; scored by swaa's scorers (`numeric`, `contains`).
{{budget}}- KV KiB per layer: bytes of keys + values in each layer's cache after the last decode step
  (mean over samples; 1 KiB = 1 token for this model: 2 KV heads x 64 dims x fp32 x K and V).
- Prefill ms: the median wall time of `generate`'s first forward (a press's compression included).
  The 2-core CPU was shared with other jobs while this ran (load average 4-11), so differences of
  this size are noise; at 512-1,024 tokens attention is a small part of this model's prefill anyway.
  SWAA's prefill saving is measured at 32K-128K tokens on a GPU (`model_speed.md`).
- Peer rows run in their own venv (kvpress 0.5.5 pins transformers < 5.3; SWAA needs >= 5.17) and
  never import swaa_patch; the full-attention row is run in both environments as a check.
"""


def fmt(value: float) -> str:
    return f"{value:.3f}"


def table(rows: list[dict[str, Any]]) -> list[str]:
    head = ["row", "kind", *TASKS, "mean", "prefill ms (median)", "KV KiB per layer", "KV KiB total"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in rows:
        if "error" in r:
            continue
        cells = [r["row"], KIND_LABEL[r["kind"]], *(fmt(r["accuracy"][t]) for t in TASKS), f"**{fmt(r['mean'])}**",
                 f"{r['prefill_ms']:.0f}", " / ".join(f"{x:.0f}" for x in r["kv_kib_per_layer"]),
                 f"{r['kv_kib_total']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def environments(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        env = r["environment"]
        seen.setdefault(", ".join(f"{k} {v}" for k, v in env.items()), {"peer": "kvpress" in env, "rows": 0})
        seen[", ".join(f"{k} {v}" for k, v in env.items())]["rows"] += 1
    return [f"- {'peer' if v['peer'] else 'SWAA'} env: {env} ({v['rows']} rows)" for env, v in seen.items()]


DUO_ATTENTION = """\
DuoAttention's per-head split (retrieval heads keep every key, streaming heads sinks + recent) is
learned per checkpoint. kvpress takes it from patterns published for six checkpoints (it asserts the
model is one of them, then downloads the pattern from the DuoAttention GitHub repository), or
computes it on the fly from BookSum, which it loads from the Hugging Face hub. Neither works offline
on the demo model. Two more facts limit a like-for-like row even online: the pattern fixes the
streaming heads' sink / recent sizes (128 / 256 on the fly, vs the 4 / 64 budget here), and kvpress
fakes head-wise compression by masking keys in attention, so the cache keeps every key."""


def did_not_run(rows: list[dict[str, Any]]) -> list[str]:
    failed = [f"- **{r['row']}** (peer) did not run: `{r['error']}`" for r in rows if "error" in r]
    if any("DuoAttention" in r["row"] for r in rows if "error" in r):
        failed += ["", DUO_ATTENTION]
    return failed


def render(rows: list[dict[str, Any]], command: str, seconds: int, budget: str = "same") -> str:
    samples = next(r["samples"] for r in rows if "samples" in r)
    out = [
        "# SWAA beside kvpress peers on the demo's held-out tasks"
        + (" at half of full attention's KV" if budget == "half" else ""),
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on the 2-core CPU machine (no GPU), {samples} samples "
        f"({samples // len(TASKS)} per task), in {seconds // 60} min {seconds % 60} s. Command:",
        "",
        f"```bash\n{command}\n```",
        "",
        *table(rows),
        "",
        *did_not_run(rows),
        "",
        "Environments:",
        *environments(rows),
        "",
        PROTOCOL.format(budget=BUDGET_TEXT[budget]),
    ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--seconds", type=int, required=True)
    parser.add_argument("--budget", choices=tuple(BUDGET_TEXT), default="same")
    args = parser.parse_args()
    rows = [row for path in args.rows for row in json.loads(path.read_text())]
    args.out.write_text(render(rows, args.command, args.seconds, args.budget))


if __name__ == "__main__":
    main()
