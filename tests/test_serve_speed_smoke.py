"""benchmarks/serve_speed.py end to end on a tiny model on the CPU: every variant runs, SWAA rows
generate what ``model.generate`` does, and the bounded rows' KV per request is flat."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import serve_speed  # noqa: E402


def test_tiny_run_writes_a_passing_report(tmp_path):
    out = tmp_path / "serve_speed.md"
    args = serve_speed.parse_args(["--tiny", "--concurrency", "3", "--memory-lengths", "64,1024", "--out", str(out)])
    assert serve_speed.main(args) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 3 |")]
    assert len(rows) == 3 and sum("tokens = generate" in row for row in rows) == 2, rows
    assert "| 64 | 48.0 KiB | 80.0 KiB | 80.0 KiB |" in text  # 4 + 32 slots: 3 pages of 16 tokens
    assert "| 1024 | 48.0 KiB | 1.0 MiB | 1.0 MiB |" in text
    assert "at 1024 / at 64 tokens = 1.000" in text
