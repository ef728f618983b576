"""benchmarks/calibration_demo.py's tables: every layer set's row carries the decode KV its
evaluation measured (from `swaa eval`'s metrics), before and after SFT."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import calibration_demo  # noqa: E402

SETS = [(0, 1), (0, 2), (1, 2)]


def metric(layers, dataset, accuracy, kv):
    return {"sliding_window_size": None if layers is None else 4, "non_sliding_layers": list(layers or ()),
            "dataset": dataset, "accuracy": accuracy, "max_kv_bytes": kv, "finished_at": "2026-12-01T00:00:00"}


def metrics(kv_of):
    rows = [metric(None, d, 1.0, kv_of(None) - i) for i, d in enumerate(("passkey", "kv_lookup"))]
    return rows + [metric(s, d, 0.5, kv_of(s)) for s in SETS for d in ("passkey", "kv_lookup")]


def test_decode_kv_is_the_most_any_dataset_held_per_row():
    kv = calibration_demo.decode_kv(metrics(lambda s: 4096 if s is None else 2048 * (1 + s[1])))
    assert kv == {None: "4.00 KiB", (0, 1): "4.00 KiB", (0, 2): "6.00 KiB", (1, 2): "6.00 KiB"}
    assert calibration_demo.decode_kv([{**metric((0, 1), "passkey", 1.0, None)}]) == {}


def test_both_tables_show_each_sets_decode_kv():
    before = metrics(lambda s: 3 << 20 if s is None else (1 + s[1]) << 20)
    after = metrics(lambda s: 3 << 20 if s is None else (5 + s[1]) << 20)
    result = {"non_sliding_layers": [0, 2], "budget": 2, "num_layers": 3, "examples": {"passkey": 2},
              "answer_tokens": 8, "greedy": [], "sensitivity": [],
              "swaa_config": {"sliding_window_size": 4, "keep_first": 1, "force_fa_decode": False}}
    scores = {s: {"kl": 0.5, "delta_nll": 0.2} for s in SETS}
    text = calibration_demo.render(result, scores, before, (1, 2), SETS, True, 0, {}, {}, "test", after, 10)
    before_table, after_table = text.split("## After LoRA SFT")
    assert "| 0, 2 | calibration | 0.5000 | 0.2000 | 3.00 MiB | 0.500 | 0.500 | 0.500 |" in before_table
    assert "| all (full attention) | - | 0 | 0 | 3.00 MiB |" in before_table
    assert "| 0, 2 | calibration | 0.500 | 7.00 MiB | 0.500 | 0.500 | 0.500 |" in after_table


def test_random_baseline_is_the_mean_of_the_drawn_sets_only():
    """With fewer draws than sets, the baseline averages only the drawn sets (not the calibrated or the
    hand-picked one, unless drawn), and says it is an estimate with its seed."""
    drawn, exact = calibration_demo.draw_sets(8, 4, 8, seed=0)
    assert not exact and len(set(drawn)) == 8 and all(len(s) == 4 and list(s) == sorted(s) for s in drawn)
    assert calibration_demo.draw_sets(8, 4, 8, seed=0) == (drawn, False)
    assert calibration_demo.draw_sets(8, 4, 8, seed=1)[0] != drawn
    every, exact = calibration_demo.draw_sets(4, 2, 6, seed=5)
    assert exact and every == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]

    rows = [metric(None, "passkey", 1.0, 10)] + [metric(s, "passkey", acc, 5) for s, acc in
                                                 (((0, 1), 1.0), ((0, 2), 0.0), ((1, 2), 0.5))]
    result = {"non_sliding_layers": [0, 1], "budget": 2, "num_layers": 3, "examples": {"passkey": 1},
              "answer_tokens": 8, "greedy": [], "sensitivity": [],
              "swaa_config": {"sliding_window_size": 4, "keep_first": 1, "force_fa_decode": False}}
    scores = {s: {"kl": 0.1, "delta_nll": 0.1} for s in SETS}
    text = calibration_demo.render(result, scores, rows, (1, 2), [(0, 2), (1, 2)], False, 7, {}, {}, "test")
    assert "| mean of the 2 random draws (seed 7; estimates a random choice) | - | - | - | - | 0.250 | 0.250 |" in text
    assert "| 0, 2 | random draw |" in text and "| 1, 2 | hand (demo.json) + random draw |" in text
    assert "| 0, 1 | calibration |" in text and "--random-sets 2 --seed 7" in text


def test_layer_set_rows_are_added_to_a_base_holding_only_full_attention(tmp_path):
    import json

    import pytest

    base = tmp_path / "base.json"
    base.write_text(json.dumps({"settings": [{"swaa_config": None, "model_list": ["m"]}], "datasets": []}))
    swaa = {"sliding_window_size": 64, "keep_first": 4, "force_fa_decode": False, "non_sliding_layers": [9]}
    path = calibration_demo.layer_sets_settings(base, [(0, 1), (2, 3)], swaa, tmp_path / "out")
    rows = json.loads(path.read_text())["settings"]
    assert [r["swaa_config"] and r["swaa_config"]["non_sliding_layers"] for r in rows] == [None, [0, 1], [2, 3]]
    assert rows[1]["model_list"] == [str(tmp_path / "m")] and rows[2]["swaa_config"]["keep_first"] == 4
    base.write_text(json.dumps({"settings": [{"swaa_config": None, "model_list": ["m"]}, {"swaa_config": swaa,
                                                                                          "model_list": ["m"]}]}))
    with pytest.raises(SystemExit, match="must hold only the full-attention row"):
        calibration_demo.layer_sets_settings(base, [(0, 1)], swaa, tmp_path / "out")
