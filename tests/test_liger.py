"""Liger Kernel in `swaa sft` and `swaa train-demo`: which kernels are applied, the settings and their
errors, and, with Liger's Triton kernels on Triton's CPU interpreter, the SFT loss and LoRA gradients
against the unfused path and SWAA's rule against the float64 reference.

Without a GPU, Liger's kernels run on Triton's interpreter with two shims (:func:`liger_on_cpu`) for
gaps of the interpreter that compiled Triton does not have."""

from __future__ import annotations

import json
import logging
import math
import os

import pytest
import torch
from reference import reference_logits, reference_model
from test_sft import RULE, first_batch, make_settings, nll, tiny  # noqa: F401  (tiny: a module fixture)
from transformers import AutoModelForCausalLM

from swaa_patch.jobs import liger as liger_module
from swaa_patch.jobs.errors import SettingsError
from swaa_patch.jobs.liger import LIGER_FAMILIES, apply_liger, use_liger
from swaa_patch.models import FAMILIES
from swaa_patch.training.settings import parse_sft
from swaa_patch.training.sft import build_trainer

needs_liger = pytest.mark.skipif(not liger_module.liger_installed(), reason="liger-kernel is not installed")
runs_triton = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
needs_kernels = pytest.mark.skipif(not (liger_module.liger_installed() and runs_triton),
                                   reason="needs liger-kernel and a GPU or TRITON_INTERPRET=1")
PROMPTS = ["The pass key is 4821. Remember it. " + "The grass is green. " * 6 + "What is the pass key?",
           "Red is a colour. " * 4 + "The code word is violet. " + "Snow is white. " * 3 + "Which code word?"]
ANSWERS = ["4821", "violet"]
LOSS_RTOL = 1e-5  # float32: fused kernels and PyTorch's ops differ by summation order only
GRAD_RTOL = 1e-4  # relative L2 of each LoRA B gradient


@pytest.fixture
def liger_on_cpu(monkeypatch):
    """Two gaps of Triton's CPU interpreter that compiled Triton does not have: a Python float kernel
    argument stays a Python float (compiled Triton passes an fp32 scalar, which Liger's RMSNorm calls
    ``.to`` on), and ``libdevice`` functions have no interpreter body (RMSNorm's ``rsqrt``: the same
    function from ``tl.math``, looked up while the interpreter has it patched)."""
    if torch.cuda.is_available():
        return
    import numpy as np
    import triton.language as tl
    from liger_kernel.ops import rms_norm
    from triton.runtime import interpreter

    convert = interpreter._implicit_cvt

    def implicit_cvt(arg):
        if isinstance(arg, float):
            return tl.tensor(interpreter.TensorHandle(np.array([arg], dtype=np.float32), tl.float32), tl.float32)
        return convert(arg)

    monkeypatch.setattr(interpreter, "_implicit_cvt", implicit_cvt)
    monkeypatch.setattr(rms_norm, "rsqrt", lambda x: tl.math.rsqrt(x))


class KernelCalls:
    """Counts calls of Liger's RMSNorm, SwiGLU and RoPE kernels (spies on the names Liger's modules call)."""

    def __init__(self, monkeypatch):
        import liger_kernel.transformers.rms_norm as rms
        import liger_kernel.transformers.rope as rope
        import liger_kernel.transformers.swiglu as swiglu

        self.counts = {"rms_norm": 0, "swiglu": 0, "rope": 0}
        for module, name, key in ((rms, "LigerRMSNormFunction", "rms_norm"), (swiglu, "LigerSiLUMulFunction", "swiglu")):
            monkeypatch.setattr(module, name, self._spy_function(getattr(module, name), key))
        dispatch = rope.dispatch

        def counted_dispatch(op, *args, **kwargs):
            self.counts["rope"] += op == "rope"
            return dispatch(op, *args, **kwargs)

        monkeypatch.setattr(rope, "dispatch", counted_dispatch)

    def _spy_function(self, function, key):
        counts = self.counts

        class Spy:
            @staticmethod
            def apply(*args, **kwargs):
                counts[key] += 1
                return function.apply(*args, **kwargs)

        return Spy


@pytest.fixture(scope="module")
def short(tiny, tmp_path_factory):  # noqa: F811
    """The tiny model with two ~60-token examples: a packed batch of two documents, each 3-4 windows
    long, small enough for Triton's interpreter to run Liger's kernels in seconds."""
    model_dir, _, tokenizer = tiny
    data = tmp_path_factory.mktemp("liger") / "short.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": a}) + "\n" for p, a in zip(PROMPTS, ANSWERS)))
    return model_dir, data, tokenizer


# -- settings and mode resolution -----------------------------------------------------------------
def test_every_swaa_family_has_a_liger_patch():
    assert set(FAMILIES) <= set(LIGER_FAMILIES)


def test_settings_field_names_its_allowed_values(tiny, tmp_path):  # noqa: F811
    model_dir, data, _ = tiny
    raw = {"model": str(model_dir), "swaa_config": None, "datasets": [str(data)], "output_dir": str(tmp_path),
           "training": {"liger": "fast"}}
    with pytest.raises(SettingsError, match=r"training\.liger: .*'auto', 'on', 'off'"):
        parse_sft(raw)
    raw["training"] = {"liger": "off"}
    assert parse_sft(raw).training.liger == "off"


def test_auto_is_off_on_a_cpu_and_on_for_cuda():
    if liger_module.liger_installed():
        assert use_liger("auto", "qwen3", on_cuda=True, where="training.liger")
    assert not use_liger("auto", "qwen3", on_cuda=False, where="training.liger")
    assert not use_liger("off", "qwen3", on_cuda=True, where="training.liger")


def test_auto_on_cuda_says_why_it_stays_off(monkeypatch, caplog):
    monkeypatch.setattr(liger_module, "liger_installed", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert not use_liger("auto", "qwen3", on_cuda=True, where="training.liger")
    assert "training.liger auto: Liger kernels off: liger-kernel is not installed (pip install 'swaa[liger]')" in caplog.text


@pytest.mark.parametrize("model_type, installed, on_cuda, interpret, message", [
    ("phi3", True, True, "0", r"applied to model_type qwen2, qwen3, .*; this model is 'phi3'"),
    ("qwen3", False, True, "0", r"liger-kernel is not installed \(pip install 'swaa\[liger\]'\)"),
    ("qwen3", True, False, "0", r"need a CUDA device .*TRITON_INTERPRET=1"),
])
def test_on_that_cannot_run_names_the_field_and_the_values(monkeypatch, model_type, installed, on_cuda, interpret,
                                                            message):
    monkeypatch.setattr(liger_module, "liger_installed", lambda: installed)
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    with pytest.raises(SettingsError, match=rf"^training\.liger: 'on' cannot be honoured: .*{message}.*"
                                             r"Allowed values: \['auto', 'on', 'off'\]"):
        use_liger("on", model_type, on_cuda=on_cuda, where="training.liger")


def test_cli_reports_an_impossible_on_in_one_line(tiny, tmp_path, monkeypatch, caplog, capsys):  # noqa: F811
    from swaa_patch.cli import main

    model_dir, data, _ = tiny
    monkeypatch.setattr(liger_module, "liger_installed", lambda: False)
    path = tmp_path / "sft.json"
    path.write_text(json.dumps({"model": str(model_dir), "swaa_config": None, "datasets": [str(data)],
                                "output_dir": "out", "training": {"max_steps": 1, "liger": "on"}}))
    assert main(["sft", str(path)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "training.liger: 'on' cannot be honoured" in errors[0]
    assert "Traceback" not in caplog.text + capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoint-1").exists()


# -- what is applied --------------------------------------------------------------------------------
@needs_liger
def test_apply_patches_norms_mlp_and_rope_but_not_the_forward_and_restores_the_module(tiny):  # noqa: F811
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
    from transformers.models.qwen3 import modeling_qwen3

    model_dir, _, _ = tiny
    originals = {n: getattr(modeling_qwen3, n) for n in ("apply_rotary_pos_emb", "Qwen3RMSNorm", "Qwen3MLP")}
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    hook = model._swaa_hook
    patch = apply_liger(model)
    try:
        assert modeling_qwen3.apply_rotary_pos_emb is liger_rotary_pos_emb
        assert sorted(patch.saved) == sorted(originals)
        layer = model.model.layers[0]
        names = {m._get_name() for m in (model.model.norm, layer.input_layernorm, layer.self_attn.q_norm)}
        assert names == {"LigerRMSNorm"} and layer.mlp._get_name() == "LigerSwiGLUMLP"
        assert "forward" not in model.__dict__  # the class's forward: SWAA's hook, trl's fused head, the cache name
        assert model._swaa_hook is hook
    finally:
        patch.restore()
    assert {n: getattr(modeling_qwen3, n) for n in originals} == originals
    patch.restore()  # idempotent


# -- numerics: Liger vs the unfused path, and SWAA's rule ---------------------------------------------
def loss_and_grads(trainer, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model = trainer.model
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


@needs_kernels
def test_sft_loss_and_lora_gradients_equal_the_unfused_path_and_follow_the_rule(short, tmp_path, liger_on_cpu,
                                                                               monkeypatch):
    """trl's forward and backward (peft, fused LM head, gradient checkpointing) with Liger's kernels on a
    packed batch of answer-carrying documents: the loss equals the float64 reference of SWAA's rule
    (answer tokens attend fully, per-document windows), and loss and LoRA gradients equal the unfused
    trainer's. LoRA B = 0 (peft's init), so the model is the base and B's gradients carry every
    layer's backward (A's are zero on both paths)."""
    model_dir, _, _ = short
    plain = build_trainer(make_settings(short, tmp_path / "plain", liger="off"))
    batch = first_batch(plain)
    assert (batch["position_ids"][0] == 0).sum() >= 2 and (batch["labels"] != -100).any()
    ids, pids, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    assert ids.shape[1] > 3 * RULE.window
    ref = reference_model(AutoModelForCausalLM.from_pretrained(model_dir))  # before Liger touches the module
    with torch.no_grad():
        expected = nll(reference_logits(ref, RULE, ids, position_ids=pids, labels=labels), labels)
    plain_loss, plain_grads = loss_and_grads(plain, batch)

    calls = KernelCalls(monkeypatch)
    fused = build_trainer(make_settings(short, tmp_path / "fused", liger="on"))
    try:
        assert fused.liger is not None and plain.liger is None
        fused.model.load_state_dict(plain.model.state_dict())  # the same LoRA A
        fused_loss, fused_grads = loss_and_grads(fused, batch)
    finally:
        fused.restore_kernels()
    layers = fused.model.config.num_hidden_layers
    assert calls.counts == {"rope": layers, "swiglu": layers, "rms_norm": 4 * layers + 1}
    assert fused_loss == pytest.approx(expected, rel=1e-5)
    assert fused_loss == pytest.approx(plain_loss, rel=LOSS_RTOL)
    assert plain_grads.keys() == fused_grads.keys()
    b_grads = [n for n in plain_grads if "lora_B" in n]
    assert len(b_grads) == 7 * layers
    for name in b_grads:
        grad = plain_grads[name]
        assert grad.norm() > 0, name
        error = float((fused_grads[name] - grad).norm() / grad.norm())
        assert error < GRAD_RTOL, (name, error)


@needs_kernels
def test_run_sft_with_liger_trains_saves_and_restores_the_module(short, tmp_path, liger_on_cpu):
    from transformers.models.qwen3 import modeling_qwen3

    from swaa_patch.training.sft import run_sft

    rope = modeling_qwen3.apply_rotary_pos_emb
    result = run_sft(make_settings(short, tmp_path / "run", max_steps=1, save_steps=1, liger="on"))
    assert result.global_step == 1 and result.metrics["liger"] is True
    assert (result.final_dir / "adapter_config.json").is_file()
    assert modeling_qwen3.apply_rotary_pos_emb is rope


@needs_kernels
def test_train_demo_applies_liger_when_asked(tmp_path, liger_on_cpu):
    """`swaa train-demo --liger on`: the demo model gets the kernels, a training step runs through them,
    and restoring leaves transformers' module as it was (the full run is test_demo_train's, with auto)."""
    from test_demo_train import tiny_args
    from transformers.models.qwen3 import modeling_qwen3

    from swaa_patch.demo.train import start_run

    rope = modeling_qwen3.apply_rotary_pos_emb
    run = start_run(tiny_args(tmp_path / "model", liger="on", eval_samples=1))
    try:
        assert run.liger is not None and run.model.model.layers[0].mlp._get_name() == "LigerSwiGLUMLP"
        ids = torch.randint(3, 100, (1, 24))
        targets = torch.cat([ids[:, 1:], torch.full((1, 1), -100)], dim=1)
        answer = torch.zeros_like(ids, dtype=torch.bool)
        answer[:, 18:23] = True
        reply_loss, prompt_loss, _ = run.train_step({"input_ids": ids, "targets": targets, "answer_mask": answer})
        assert run.state.step == 1 and math.isfinite(reply_loss) and math.isfinite(prompt_loss)
    finally:
        run.liger.restore()
    assert modeling_qwen3.apply_rotary_pos_emb is rope
