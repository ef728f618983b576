"""`swaa sft`'s kernel warm-up: when it runs, the pass it makes, and (on a GPU) that the run's first step
then compiles no Triton kernel, with the same losses as without it."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from test_sft import ROOT, SWAA, make_settings, tiny  # noqa: F401  (the module fixture)

from swaa_patch.backends import triton_swa_train
from swaa_patch.jobs.validate import SettingsError
from swaa_patch.training.kernel_warmup import (
    DIVISIBILITY,
    one_layer_config,
    warm_pass,
    warm_up_kernels,
    warmup_blocker,
    warmup_lengths,
)


def test_when_it_runs(tiny, tmp_path, caplog):  # noqa: F811
    settings = make_settings(tiny, tmp_path / "out")
    assert settings.training.kernel_warmup == "auto"
    assert "off" in warmup_blocker("off", on_cuda=True)
    assert "CUDA" in warmup_blocker("auto", on_cuda=False)
    if not torch.cuda.is_available():
        with caplog.at_level(logging.DEBUG, logger="swaa_patch.training.kernel_warmup"):
            assert warm_up_kernels(settings, str(tiny[0]), None) is None
        assert "no CUDA device" in caplog.text


def test_bad_mode_names_the_field(tiny, tmp_path):  # noqa: F811
    with pytest.raises(SettingsError, match=r"training\.kernel_warmup.*auto.*off"):
        make_settings(tiny, tmp_path / "out", kernel_warmup="sometimes")


def test_lengths_cover_both_specialisations_past_the_window(tiny, tmp_path):  # noqa: F811
    settings = make_settings(tiny, tmp_path / "out")  # window 16, keep_first 2, max_length 512
    lengths = warmup_lengths(settings, max_positions=None)
    assert sorted(n % DIVISIBILITY == 0 for n in lengths) == [False, True]
    reach = settings.swaa_config.sliding_window_size + settings.swaa_config.keep_first
    assert all(reach < n <= settings.data.max_length for n in lengths)
    assert all(n <= 100 for n in warmup_lengths(settings, max_positions=100))  # a model with few positions


def test_one_layer_config(tiny):  # noqa: F811
    config = one_layer_config(str(tiny[0]))
    assert config.num_hidden_layers == 1
    assert len(getattr(config, "layer_types", None) or [None]) == 1


def test_the_pass_runs_the_model_and_leaves_the_run_s_counts(tiny, tmp_path):  # noqa: F811
    """On the CPU (no Triton launch to turn into a compile): the pass trains the one-layer model at both
    lengths through SWAA's plan (real losses here) and restores the attention-path counts."""
    settings = make_settings(tiny, tmp_path / "out", liger="off")  # Liger's kernels need CUDA tensors
    triton_swa_train.PATH_COUNTS.clear()
    triton_swa_train.PATH_COUNTS["a call of the run"] = 3
    rng = torch.get_rng_state()
    losses = warm_pass(settings, str(tiny[0]), None, device="cpu")
    assert torch.equal(torch.get_rng_state(), rng)  # the run's LoRA initialisation is not moved
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses)
    assert dict(triton_swa_train.PATH_COUNTS) == {"a call of the run": 3}
    assert not (tmp_path / "out").exists()


# A fresh process (empty in-memory and on-disk Triton caches): build the trainer (the warm-up runs
# there, when on), then count the Triton compiles train() asks for.
CHILD = textwrap.dedent("""
    import json, sys
    from triton.runtime.jit import JITFunction
    from swaa_patch.backends import triton_swa_train
    from swaa_patch.training.settings import parse_sft
    from swaa_patch.training.sft import build_trainer

    trainer = build_trainer(parse_sft(json.loads(sys.argv[1])))
    compiled, original = [], JITFunction._do_compile
    def counting(self, *args, **kwargs):
        compiled.append(self.fn.__name__)
        return original(self, *args, **kwargs)
    JITFunction._do_compile = counting
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(json.dumps({"compiled": compiled, "losses": losses, "calls": dict(triton_swa_train.PATH_COUNTS)}))
""")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton compiles kernels on a GPU only")
def test_after_the_warm_up_the_first_step_compiles_nothing(tiny, tmp_path):  # noqa: F811
    model_dir, data, _ = tiny
    results = {}
    for mode in ("auto", "off"):
        document = {
            "model": str(model_dir), "swaa_config": SWAA, "datasets": [str(data)], "output_dir": str(tmp_path / mode),
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "data": {"max_length": 512, "packing": False},
            "training": {"max_steps": 2, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
                         "logging_steps": 1, "save_steps": 100, "liger": "on", "kernel_warmup": mode},
        }
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / f"triton-{mode}"), "PYTHONPATH": path}
        done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(document)], env=env, cwd=ROOT,
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    warm, cold = results["auto"], results["off"]
    assert cold["compiled"], "without the warm-up the run compiled nothing: the test could not fail"
    assert any(name.startswith("swa_sink") or name == "sink_merge_fwd" for name in cold["compiled"]), cold
    assert warm["compiled"] == [], warm["compiled"]
    assert warm["calls"].get("cudnn", 0) + warm["calls"].get("triton", 0) > 0, warm["calls"]
    assert warm["losses"][0] == pytest.approx(cold["losses"][0], rel=1e-3)
    assert warm["losses"][1] == pytest.approx(cold["losses"][1], rel=1e-2)
