"""LoRA SFT of a SWA-patched tiny model: loss on answers only, packing, training, adapters, resume."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import psutil
import pytest
import torch
from reference import RefRule, reference_logits, reference_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.modeling_layers import GradientCheckpointingLayer

from swaa_patch import SWAAConfig, apply_swaa, remove_swaa
from swaa_patch.data.synthetic import generate_task, tokenizer_counter
from swaa_patch.jobs.builtin_models import resolve_builtin_model
from swaa_patch.jobs.errors import Interrupted, RunRefused
from swaa_patch.jobs.loading import load_model
from swaa_patch.jobs.prompts import prompt_ids
from swaa_patch.jobs.validate import SettingsError
from swaa_patch.training.adapter import load_swaa_adapter, merge_swaa_adapter, read_swaa_config
from swaa_patch.training.checkpoints import COMPLETE_MARKER
from swaa_patch.training.data import encode_example
from swaa_patch.training.settings import load_sft_settings, parse_sft
from swaa_patch.training.sft import build_trainer, run_sft, save_final, sft_config

ROOT = Path(__file__).resolve().parents[1]
SWAA = {"sliding_window_size": 16, "keep_first": 2, "force_fa_decode": True, "non_sliding_layers": []}
RULE = RefRule(16, 2, True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The built-in tiny model and a small (prompt, response) file of short passkey prompts."""
    root = tmp_path_factory.mktemp("sft")
    model_dir = resolve_builtin_model("builtin:tiny-random-qwen3", root / "builtin")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = generate_task("passkey", tokenizer_counter(tokenizer), [128, 160], [0.2, 0.8], 1, seed=0)
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["answer"]}) + "\n" for r in rows))
    return model_dir, data, tokenizer


def make_settings(tiny, out: Path, swaa=SWAA, **training):
    model_dir, data, _ = tiny
    train = {"learning_rate": 5e-3, "max_steps": 30, "per_device_train_batch_size": 2,
             "gradient_accumulation_steps": 1, "warmup_ratio": 0.0, "logging_steps": 5, "save_steps": 100,
             "gradient_checkpointing": True, **training}
    return parse_sft({
        "model": str(model_dir), "swaa_config": swaa, "datasets": [str(data)], "output_dir": str(out),
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"max_length": 512, "packing": True}, "training": train,
    })


def first_batch(trainer) -> dict:
    return dict(next(iter(trainer.get_train_dataloader())))


def fixed_loss(trainer, batch) -> float:
    trainer.model.eval()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, dict(batch)))


@torch.no_grad()
def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits[0, :-1].double(), labels[0, 1:], ignore_index=-100))


def documents(position_ids: torch.Tensor) -> list[slice]:
    starts = (position_ids[0] == 0).nonzero().flatten().tolist() + [position_ids.shape[1]]
    return [slice(a, b) for a, b in zip(starts, starts[1:])]


# -- settings -----------------------------------------------------------------------------------
def test_shipped_settings_parse():
    settings = load_sft_settings(ROOT / "settings" / "sft_tiny.json")
    assert settings.swaa_config == SWAAConfig(sliding_window_size=64, keep_first=4, force_fa_decode=True)
    assert settings.data.response_field == "answer" and settings.lora.r == 8


@pytest.mark.parametrize("patch, message", [
    ({"lora": {"r": 0}}, "lora.r: must be an integer >= 1, got 0"),
    ({"training": {"lr": 1}}, "training: unknown key(s) ['lr']"),
    ({"swaa_config": {"keep_first": -1}}, "swaa_config.keep_first: must be an integer >= 0"),
    ({"data": {"response_field": "completion"}}, "datasets[0]: dataset"),
    ({"data": {"min_length": 5000}}, "data.min_length: must be <= max_length"),
    ({"training": {"max_steps": 0}}, "training.max_steps: must be -1"),
    ({"training": {"checkpoint_every_n_layers": 0}}, "training.checkpoint_every_n_layers: must be an integer >= 1"),
    ({"training": {"gradient_checkpointing": False, "checkpoint_every_n_layers": 2}},
     "training.checkpoint_every_n_layers: picks which layers gradient checkpointing recomputes"),
])
def test_settings_errors_name_the_json_path(tiny, tmp_path, patch, message):
    model_dir, data, _ = tiny
    raw = {"model": str(model_dir), "swaa_config": None, "datasets": [str(data)], "output_dir": str(tmp_path)}
    raw.update(patch)
    with pytest.raises(SettingsError) as err:
        parse_sft(raw)
    assert message in str(err.value)


# -- data ---------------------------------------------------------------------------------------
def test_prompt_tokens_carry_no_loss(tiny):
    _, _, tokenizer = tiny
    encoded = encode_example(tokenizer, "Where is it? Answer:", "in the attic", chat_template=True)
    head = prompt_ids(tokenizer, "Where is it? Answer:", True)  # what eval and distill feed the model
    assert encoded.input_ids[: len(head)] == head
    assert encoded.labels[: len(head)] == [-100] * len(head)
    assert encoded.labels[len(head) :] == encoded.input_ids[len(head) :]
    assert tokenizer.decode(encoded.input_ids[len(head) :]).startswith("in the attic<|im_end|>")


@pytest.fixture(scope="module")
def fresh_trainer(tiny, tmp_path_factory):
    return build_trainer(make_settings(tiny, tmp_path_factory.mktemp("fresh")))


def test_packed_batch_masks_every_prompt_token(tiny, fresh_trainer):
    _, data, tokenizer = tiny
    batch = first_batch(fresh_trainer)
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # padding-free packing
    docs = documents(batch["position_ids"])
    assert len(docs) >= 2
    examples = {}
    for line in data.read_text().splitlines():
        row = json.loads(line)
        enc = encode_example(tokenizer, row["prompt"], row["response"], True)
        examples[tuple(enc.input_ids)] = enc.labels
    for doc in docs:
        ids = tuple(batch["input_ids"][0, doc].tolist())
        assert batch["labels"][0, doc].tolist() == examples[ids]  # -100 exactly on the prompt


def test_trainer_loss_follows_the_reference_rule_on_packed_documents(tiny, fresh_trainer):
    """trl's forward path (peft, fused LM head, gradient checkpointing) must hand the labels to SWAA:
    answer tokens attend fully, prompts use per-document windows, documents never see each other."""
    model_dir, _, _ = tiny
    batch = first_batch(fresh_trainer)
    assert fresh_trainer.args.gradient_checkpointing
    fresh_trainer.model.train()
    loss = float(fresh_trainer.compute_loss(fresh_trainer.model, dict(batch)).detach())  # LoRA B = 0: the base
    ref = reference_model(AutoModelForCausalLM.from_pretrained(model_dir))
    ids, pids, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    with torch.no_grad():
        expected = nll(reference_logits(ref, RULE, ids, position_ids=pids, labels=labels), labels)
        prompt_rule = nll(reference_logits(ref, RULE, ids, position_ids=pids), labels)  # answers on the window
    assert loss == pytest.approx(expected, rel=1e-5)
    assert abs(prompt_rule - expected) > 1e-3


@pytest.mark.parametrize("swaa", [SWAA, None])
def test_packing_never_lets_a_token_see_another_document(tiny, fresh_trainer, swaa):
    model_dir, _, _ = tiny
    batch = first_batch(fresh_trainer)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    from swaa_patch import apply_swaa

    apply_swaa(model, swaa).eval()
    ids, pids, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    first, second = documents(pids)[:2]
    # use_cache=False as in training: stock transformers (swaa None) finds packed documents only without a cache
    with torch.no_grad():
        logits = model(input_ids=ids, position_ids=pids, labels=labels, use_cache=False).logits
        changed = ids.clone()
        changed[0, first] = torch.randint(10, 2000, (first.stop - first.start,))
        other = model(input_ids=changed, position_ids=pids, labels=labels, use_cache=False).logits
        alone = model(input_ids=ids[:, second], position_ids=pids[:, second], labels=labels[:, second],
                      use_cache=False).logits
    torch.testing.assert_close(other[0, second], logits[0, second], rtol=0, atol=1e-5)
    torch.testing.assert_close(alone[0], logits[0, second], rtol=0, atol=1e-4)
    if swaa is not None:
        ref = reference_model(model)
        expected = reference_logits(ref, RULE, ids, position_ids=pids, labels=labels)
        torch.testing.assert_close(logits.double(), expected, rtol=0, atol=1e-4)


# -- training, adapters -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    settings = make_settings(tiny, tmp_path_factory.mktemp("trained"))
    trainer = build_trainer(settings)
    batch = first_batch(trainer)
    before = fixed_loss(trainer, batch)
    trainer.train()
    after = fixed_loss(trainer, batch)
    return settings, trainer, before, after, save_final(trainer, settings)


def test_a_few_dozen_steps_lower_the_loss_on_a_fixed_batch(trained):
    _, trainer, before, after, _ = trained
    assert trainer.state.global_step == 30
    assert after < before - 0.5  # nats; the random tiny model's logits start almost uniform
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert all(h["tflops_per_device"] > 0 and h["tokens_per_s"] > 0 for h in logged)
    # the first log says how long the process took to its first step (imports and model load included)
    assert [("since_process_start_s" in h) for h in logged] == [True] + [False] * (len(logged) - 1)
    assert 0 < logged[0]["since_process_start_s"] < time.time() - psutil.Process().create_time()


def test_saved_adapter_reloads_to_identical_logits_with_its_swa_behaviour(tiny, trained, tmp_path):
    model_dir, _, tokenizer = tiny
    settings, trainer, _, _, final = trained
    assert read_swaa_config(final) == settings.swaa_config
    ids = torch.tensor([prompt_ids(tokenizer, "The pass key is 123456. " * 12 + "What is it?", True)])
    assert ids.shape[1] > 3 * settings.swaa_config.sliding_window_size
    trainer.model.eval()
    loaded = load_swaa_adapter(None, final).eval()
    with torch.no_grad():
        expected = trainer.model(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        merged_dir = merge_swaa_adapter(final, tmp_path / "merged")
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, attn_implementation="sdpa").eval()
        assert SWAAConfig.coerce(merged.config.swaa_config) == settings.swaa_config
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=0, atol=1e-4)
        remove_swaa(loaded.base_model.model)
        assert (loaded(input_ids=ids).logits - expected).abs().max() > 1e-3  # the window matters


def test_adapter_shipped_beside_its_base_loads_from_any_directory(tiny, trained, tmp_path, monkeypatch):
    """A relative ``base_model_name_or_path`` is read relative to the adapter folder (demo/)."""
    model_dir, _, tokenizer = tiny
    _, trainer, _, _, final = trained
    shipped = tmp_path / "shipped"
    shutil.copytree(model_dir, shipped / "model")
    shutil.copytree(final, shipped / "adapter")
    config_path = shipped / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "../model"
    config_path.write_text(json.dumps(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ids = torch.tensor([prompt_ids(tokenizer, "The pass key is 123456. " * 12 + "What is it?", True)])
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(input_ids=ids).logits
        loaded = load_swaa_adapter(None, shipped / "adapter").eval()
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, rtol=0, atol=1e-6)
        merged = load_model(str(shipped / "adapter"), "float32", "sdpa", "cpu")  # how `swaa eval` loads it
        apply_swaa(merged, read_swaa_config(shipped / "adapter"))
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=0, atol=1e-4)


# -- resume -------------------------------------------------------------------------------------
class CrashAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"simulated crash before step {self.step + 1}")


class Steps(TrainerCallback):
    def __init__(self):
        self.seen: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.append(state.global_step)


def test_checkpointing_every_nth_layer_recomputes_only_those_and_trains_the_same(tiny, tmp_path):
    """training.checkpoint_every_n_layers reaches transformers' every_n_layers: in a training step the
    checkpointed layers run forward twice (the recompute), the others once, and the losses are those of
    checkpointing every layer (recomputing changes no number)."""
    losses, calls = {}, {}
    for n in (1, 2):
        trainer = build_trainer(make_settings(tiny, tmp_path / str(n), max_steps=3, logging_steps=1,
                                              checkpoint_every_n_layers=n))  # fmt: skip
        layers = [m for m in trainer.model.modules() if isinstance(m, GradientCheckpointingLayer)]
        assert len(layers) >= 2
        calls[n] = [0] * len(layers)
        for i, layer in enumerate(layers):  # the layer's MLP: transformers checkpoints forward, not the hooks
            layer.mlp.register_forward_pre_hook(lambda *_, i=i, n=n: calls[n].__setitem__(i, calls[n][i] + 1))
        trainer.train()
        losses[n] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        assert [layer.gradient_checkpointing for layer in layers] == [i % n == 0 for i in range(len(layers))]
    assert calls[1] == [6] * len(calls[1])  # 3 steps x (forward + recompute)
    assert calls[2] == [6 if i % 2 == 0 else 3 for i in range(len(calls[2]))]
    assert losses[2] == pytest.approx(losses[1], rel=1e-5) and len(losses[1]) == 3


def test_lora_inputs_skip_pefts_cast_under_autocast_and_give_the_same_numbers(tiny):
    """lora_inputs_uncast: under bf16 autocast, LoRA layers (float32 adapters on a bf16 base) without peft's
    input cast take the bf16 activation as it is, and the loss and every LoRA gradient are bit-identical
    to peft's cast path (bf16 -> float32 -> bf16 is exact)."""
    from peft import get_peft_model

    from swaa_patch.training.settings import LoraSettings
    from swaa_patch.training.sft import lora_config, lora_inputs_uncast

    model_dir, _, _ = tiny
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    model = get_peft_model(base, lora_config(LoraSettings(r=4, alpha=8, dropout=0.0)))
    for name, p in model.named_parameters():  # B starts at zero: give the adapters something to say
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    ids = torch.randint(3, 200, (1, 48))
    lora_a = [m for n, m in model.named_modules() if n.endswith("lora_A.default")]
    assert lora_a and all(m.weight.dtype == torch.float32 for m in lora_a)
    results = {}
    for uncast in (False, True):
        seen = set()
        hooks = [m.register_forward_pre_hook(lambda _, a, seen=seen: seen.add(a[0].dtype)) for m in lora_a]
        model.zero_grad()
        with lora_inputs_uncast(model, mixed_precision=uncast), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        for h in hooks:
            h.remove()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[uncast] = (loss.detach(), grads, seen)
    assert results[False][2] == {torch.float32} and results[True][2] == {torch.bfloat16}
    assert torch.equal(results[False][0], results[True][0])
    assert all(torch.equal(results[False][1][n], g) for n, g in results[True][1].items())
    assert all(m.cast_input_dtype_enabled for n, m in model.named_modules() if n.endswith(".q_proj"))  # restored


def test_training_under_mixed_precision_runs_without_lora_input_casts(tiny, tmp_path):
    class Flags(TrainerCallback):
        def __init__(self) -> None:
            self.seen: list[set[bool]] = []

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            self.seen.append({m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")})

    flags = Flags()
    trainer = build_trainer(make_settings(tiny, tmp_path / "run", max_steps=2), callbacks=(flags,))
    trainer.args.bf16 = True  # what sft_config sets on a GPU; the CPU run itself stays float32
    trainer.train()
    assert flags.seen == [{False}, {False}]
    assert {m.cast_input_dtype_enabled for m in trainer.model.modules() if hasattr(m, "cast_input_dtype_enabled")} == {True}


@pytest.mark.parametrize("launched", ["bf16", "fp16", None])
def test_the_settings_decide_precision_not_the_launcher(tiny, tmp_path, monkeypatch, caplog, launched):
    """``accelerate launch`` exports its config's mixed_precision; transformers would take it for a run
    whose settings want float32 (a CPU run here)."""
    if launched is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launched)
    with caplog.at_level(logging.WARNING, logger="swaa_patch.training.sft"):
        config = sft_config(make_settings(tiny, tmp_path / "run", max_steps=1))
    assert not config.bf16 and not config.fp16 and config.mixed_precision == "no"
    warned = [r.getMessage() for r in caplog.records if "ACCELERATE_MIXED_PRECISION" in r.getMessage()]
    assert len(warned) == (launched is not None)
    if launched:
        assert f"ACCELERATE_MIXED_PRECISION={launched}" in warned[0] and "follows the settings" in warned[0]


def test_resume_continues_from_the_step_it_stopped_at(tiny, tmp_path):
    settings = make_settings(tiny, tmp_path / "run", max_steps=6, save_steps=2, logging_steps=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_sft(settings, callbacks=(CrashAt(4),))
    assert (tmp_path / "run" / "checkpoint-4" / "swaa_config.json").is_file()
    steps = Steps()
    result = run_sft(settings, callbacks=(steps,))
    assert result.resumed_from.endswith("checkpoint-4")
    assert steps.seen == [5, 6] and result.global_step == 6
    saved = json.loads((tmp_path / "run" / "train_metrics.json").read_text())
    losses = [h["loss"] for h in saved["log_history"] if "loss" in h]
    assert [h["step"] for h in saved["log_history"] if "loss" in h] == [1, 2, 3, 4, 5, 6]
    assert read_swaa_config(result.final_dir) == settings.swaa_config
    # train_loss covers every step, not only the two run after the resume.
    assert saved["metrics"]["train_loss"] == pytest.approx(sum(losses) / 6, rel=1e-9)
    assert abs(saved["metrics"]["train_loss"] - sum(losses[4:]) / 2) > 1e-6


def test_a_half_saved_newest_checkpoint_is_skipped_and_redone(tiny, tmp_path, caplog):
    settings = make_settings(tiny, tmp_path / "run", max_steps=4, save_steps=2, logging_steps=2)
    run_sft(settings)
    for step in (2, 4):
        folder = tmp_path / "run" / f"checkpoint-{step}"
        assert json.loads((folder / COMPLETE_MARKER).read_text()) == {"global_step": step}
        assert read_swaa_config(folder) == settings.swaa_config
    # A kill in the middle of saving checkpoint-4: weights torn, no swaa_config.json, no marker, no final/.
    torn = tmp_path / "run" / "checkpoint-4"
    weights = torn / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (torn / "swaa_config.json").unlink()
    (torn / COMPLETE_MARKER).unlink()
    shutil.rmtree(tmp_path / "run" / "final")
    steps = Steps()
    with caplog.at_level("WARNING"):
        result = run_sft(dataclasses.replace(settings, training=dataclasses.replace(
            settings.training, save_total_limit=1)), callbacks=(steps,))
    assert f"skipping {torn}: incomplete" in caplog.text
    assert result.resumed_from.endswith("checkpoint-2") and steps.seen == [3, 4]
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-4"]  # rotated
    assert (torn / COMPLETE_MARKER).is_file() and read_swaa_config(torn) == settings.swaa_config
    load_swaa_adapter(None, torn)  # the redone checkpoint loads


def test_a_finished_run_refuses_settings_that_change_its_results(tiny, tmp_path, caplog):
    settings = make_settings(tiny, tmp_path / "run", max_steps=2, save_steps=2)
    run_sft(settings)
    final_config = (tmp_path / "run" / "final" / "swaa_config.json").read_text()
    metrics = (tmp_path / "run" / "train_metrics.json").read_text()
    other = {**SWAA, "sliding_window_size": 32}
    with pytest.raises(RunRefused, match=r"swaa_config\.sliding_window_size 16 -> 32.*--no-resume"):
        run_sft(make_settings(tiny, tmp_path / "run", swaa=other, max_steps=2, save_steps=2))
    bigger = dataclasses.replace(settings, lora=dataclasses.replace(settings.lora, r=4))
    with pytest.raises(RunRefused, match=r"lora\.r 8 -> 4"):
        run_sft(bigger)
    assert (tmp_path / "run" / "final" / "swaa_config.json").read_text() == final_config  # not relabelled
    assert (tmp_path / "run" / "train_metrics.json").read_text() == metrics

    # The same settings again: nothing to train, nothing relabelled, the loss still covers every step.
    again = run_sft(dataclasses.replace(settings, training=dataclasses.replace(settings.training, logging_steps=1)))
    assert again.global_step == 2 and again.metrics["train_loss"] == pytest.approx(
        json.loads(metrics)["metrics"]["train_loss"], rel=1e-9)

    # --no-resume trains again from scratch with the new config, replacing the old results.
    fresh = run_sft(dataclasses.replace(make_settings(tiny, tmp_path / "run", swaa=other, max_steps=2,
                                                      save_steps=2), resume=False))
    assert fresh.resumed_from is None and read_swaa_config(fresh.final_dir).sliding_window_size == 32
    assert "removed the results of the earlier run" in caplog.text


class CtrlCAt(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt


def test_ctrl_c_says_which_checkpoint_a_rerun_resumes(tiny, tmp_path):
    settings = make_settings(tiny, tmp_path / "run", max_steps=4, save_steps=2)
    with pytest.raises(Interrupted, match=r"^interrupted: the newest complete checkpoint is checkpoint-2 in .*run "
                                          r"the same command again to resume$"):
        run_sft(settings, callbacks=(CtrlCAt(),))
    assert run_sft(settings).resumed_from.endswith("checkpoint-2")


def test_cli_refuses_a_changed_lora_rank_in_one_line(tiny, tmp_path, caplog, capsys):
    from swaa_patch.cli import main

    model_dir, data, _ = tiny
    raw = {"model": str(model_dir), "swaa_config": SWAA, "datasets": [str(data)], "output_dir": "out",
           "lora": {"r": 8}, "data": {"max_length": 512}, "training": {"max_steps": 1, "save_steps": 1}}
    path = tmp_path / "sft.json"
    path.write_text(json.dumps(raw))
    assert main(["sft", str(path)]) == 0
    path.write_text(json.dumps({**raw, "lora": {"r": 16}}))
    caplog.clear()
    assert main(["sft", str(path)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "lora.r 8 -> 16" in errors[0]
    assert "Traceback" not in caplog.text + capsys.readouterr().err


def test_cli_runs_the_shipped_tiny_settings(tmp_path):
    from swaa_patch.cli import main

    assert main(["sft", str(ROOT / "settings" / "sft_tiny.json"), "--output-dir", str(tmp_path), "--max-steps", "2"]) == 0
    assert (tmp_path / "final" / "adapter_config.json").is_file()
    assert (tmp_path / "merged" / "config.json").is_file()
    assert main(["sft", str(ROOT / "settings" / "sft_tiny.json"), "--output-dir", str(tmp_path / "x"),
                 "--max-steps", "2", "--no-resume"]) == 0


def test_training_set_fingerprint_is_a_digest_of_the_rows(monkeypatch):
    """build_dataset never asks datasets to pickle the Arrow table for a fingerprint (that pickling
    failed on the GPU machine's Python 3.12); the fingerprint follows the ids and labels."""
    import datasets.arrow_dataset

    from swaa_patch.training.data import Encoded, build_dataset

    def refuse(dataset):
        raise AssertionError("the table was hashed")

    monkeypatch.setattr(datasets.arrow_dataset, "generate_fingerprint", refuse)
    rows = [Encoded([5, 6, 7], [-100, 6, 7]), Encoded([8, 9], [-100, 9])]
    dataset = build_dataset(rows)
    assert dataset["input_ids"] == [[5, 6, 7], [8, 9]] and dataset["labels"] == [[-100, 6, 7], [-100, 9]]
    assert build_dataset(rows)._fingerprint == dataset._fingerprint
    assert build_dataset([rows[0], Encoded([8, 9], [-100, -100])])._fingerprint != dataset._fingerprint
    assert build_dataset([Encoded([5, 6], [7, 8])])._fingerprint != build_dataset([Encoded([5], [6, 7, 8])])._fingerprint
