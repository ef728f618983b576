"""Benchmark command lines: ``--tiny`` swaps in small sizes only for options the user did not name.

A value the user typed is kept even when it equals the full-size default (``--tiny --window 2048``
once ran with window 32, silently); fields set in code keep the old rule (kept when they differ
from the full-size default)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import decode_speed  # noqa: E402
from bench_common import given_options, with_tiny_defaults  # noqa: E402


def test_named_options_survive_tiny_even_at_their_default():
    args = decode_speed.parse_args(["--tiny", "--contexts", "8192,32768,131072", "--steps", "200"])
    assert set(args.given) == {"tiny", "contexts", "steps"}
    small = with_tiny_defaults(args, decode_speed.TINY_DEFAULTS)
    assert small.contexts == (8192, 32768, 131072) and small.steps == 200  # named: kept at the full-size value
    assert small.batches == decode_speed.TINY_DEFAULTS["batches"]  # not named: the tiny size


def test_fields_set_in_code_keep_their_value():
    args = decode_speed.DecodeSpeedArgs(tiny=True, contexts=(40,))
    small = with_tiny_defaults(args, decode_speed.TINY_DEFAULTS)
    assert small.contexts == (40,) and small.window == decode_speed.TINY_DEFAULTS["window"]


def test_given_options_reads_flags_and_values_without_defaults():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out", default="x.md")
    assert given_options(parser, ["--resume", "--window=2048"]) == ("resume", "window")
    assert given_options(parser, []) == ()
