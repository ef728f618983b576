"""The demo model's training script: tokenizer, data stream, loss, checkpoints, resume, settings.

Tiny shapes (hidden 32, 4 layers so settings/demo.json's interleaved row [1, 3] is valid), the
passkey task only (it fits in 128-token prompts) and a few dozen steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from swaa_patch.demo import data as demo_data
from swaa_patch.demo.data import (
    TRAIN_SEED_BASE,
    VALIDATION_SEED,
    StreamSpec,
    TrainBatches,
    encode,
    heldout_records,
)
from swaa_patch.demo.tokenizer import build_demo_tokenizer
from swaa_patch.demo.train import (
    DEFAULT_TASKS,
    SUMMARY_FILE,
    TrainDemoArgs,
    batch_loss,
    build_model,
    checkpoint_dir,
    lr_factor,
    train,
)

DEMO_SETTINGS = Path(__file__).resolve().parents[1] / "settings" / "demo.json"


def tiny_args(output_dir: Path, **overrides) -> TrainDemoArgs:
    args = TrainDemoArgs(
        output_dir=str(output_dir), hidden_size=32, num_layers=4, num_heads=2, num_kv_heads=1, head_dim=16,
        intermediate_size=64, tasks=["passkey"], batch_size=4, max_steps=30, warmup_steps=5, min_length=128,
        max_length=192, eval_every=0, eval_lengths=[160], eval_depths=[0.5], eval_samples=1, eval_batch_size=4,
        max_new_tokens=8, log_every=10, save_every=10, device="cpu", num_workers=0, save_dtype="float32",
    )
    return dataclasses.replace(args, **overrides)


@pytest.fixture(scope="module")
def tokenizer():
    return build_demo_tokenizer(2048, DEFAULT_TASKS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return train(tiny_args(tmp_path_factory.mktemp("demo") / "model"))


def test_tokenizer_builds_deterministically(tokenizer):
    again = build_demo_tokenizer(2048, DEFAULT_TASKS)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert len(tokenizer) == 2048
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    # Digits one by one (a model copies numbers digit by digit); task words are whole tokens.
    assert tokenizer.tokenize(" 4829")[-4:] == ["4", "8", "2", "9"]
    assert "Ġmagic" in tokenizer.get_vocab()


def test_reply_follows_the_prompt_as_the_chat_template_renders_it(tokenizer):
    count = demo_data.tokenizer_counter(tokenizer)
    record = demo_data.make_sample("multikey_niah", 320, 0.3, TRAIN_SEED_BASE, 0, count)
    encoded = encode(tokenizer, record)
    conversation = [{"role": "user", "content": record["prompt"]},
                    {"role": "assistant", "content": demo_data.answer_text(record["answer"], record["scoring"])}]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert full[: len(encoded.prompt) + len(encoded.reply)] == encoded.prompt + encoded.reply
    assert tokenizer.decode(encoded.reply[slice(*encoded.value)]) == record["answer"]


def test_training_batches_are_a_pure_function_of_the_step(tokenizer):
    spec = StreamSpec(DEFAULT_TASKS, 320, 480, batch_size=3, seed=0)
    batches = TrainBatches(tokenizer, spec, num_steps=10)
    first, again = batches[4], TrainBatches(tokenizer, spec, num_steps=10)[4]
    assert all(torch.equal(first[k], again[k]) for k in first)
    real = (first["input_ids"] != tokenizer.pad_token_id).sum(1)
    assert int(real.max()) <= 480 * demo_data.LENGTH_SLACK + 20
    # Reply targets are real tokens; the answer value lies inside the reply.
    assert bool((first["targets"][first["answer_mask"]] >= 0).all())
    assert bool((first["answer_mask"] | ~first["value_mask"]).all())
    assert not torch.equal(batches[4]["input_ids"][:, :50], batches[5]["input_ids"][:, :50])


def test_heldout_seeds_are_disjoint_from_training_seeds(tokenizer, monkeypatch):
    used = []
    make_sample = demo_data.make_sample

    def spy(task, length, depth, seed, index, count):
        used.append(seed)
        return make_sample(task, length, depth, seed, index, count)

    monkeypatch.setattr(demo_data, "make_sample", spy)
    TrainBatches(tokenizer, StreamSpec(DEFAULT_TASKS, 320, 400, batch_size=2, seed=3), num_steps=3)[2]
    assert used and min(used) >= TRAIN_SEED_BASE

    settings = json.loads(DEMO_SETTINGS.read_text())
    heldout = [settings.get("seed", 0)] + [d.get("seed", settings.get("seed", 0)) for d in settings["datasets"]]
    assert max(heldout) < TRAIN_SEED_BASE and VALIDATION_SEED < TRAIN_SEED_BASE
    with pytest.raises(ValueError, match="held-out seeds"):
        heldout_records(tokenizer, ["passkey"], [320], [0.5], 1, seed=TRAIN_SEED_BASE)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    factors = [lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 100, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_short_run_lowers_the_loss_and_writes_a_loadable_model(trained):
    args = tiny_args(trained)
    model = AutoModelForCausalLM.from_pretrained(trained)
    loaded = AutoTokenizer.from_pretrained(trained)
    rebuilt = build_demo_tokenizer(args.vocab_size, args.tasks)
    assert loaded.backend_tokenizer.to_str() == rebuilt.backend_tokenizer.to_str()
    batch = TrainBatches(loaded, StreamSpec(("passkey",), 128, 192, batch_size=4, seed=99), 1)[0]
    with torch.no_grad():
        _, before, _ = batch_loss(build_model(args, loaded), batch, 0.0)  # the seeded initial weights
        _, after, _ = batch_loss(model, batch, 0.0)
    assert after < before - 0.5, (before, after)

    summary = json.loads((trained / SUMMARY_FILE).read_text())
    assert summary["steps"] == 30 and not summary["stopped_by_budget"]
    assert set(summary["final_eval"]["accuracy"]) == {"passkey"}
    assert model.dtype == torch.float32  # tiny_args saves float32 (the default is bfloat16)
    assert not checkpoint_dir(trained).exists()  # removed once the final folder is in place
    prompt = loaded("Question: What is the pass key?", return_tensors="pt")
    assert model.generate(**prompt, max_new_tokens=3, do_sample=False).shape[1] >= prompt["input_ids"].shape[1]


def test_save_dtype_casts_the_saved_weights_only(tmp_path):
    """bfloat16 halves the file; the weights are the float32 run's, rounded (training is unchanged)."""
    full = train(tiny_args(tmp_path / "full", max_steps=6))
    half = train(tiny_args(tmp_path / "half", max_steps=6, save_dtype="bfloat16"))
    ref, small = (AutoModelForCausalLM.from_pretrained(p) for p in (full, half))
    assert small.dtype == torch.bfloat16
    assert (half / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    for (name, a), (_, b) in zip(ref.state_dict().items(), small.state_dict().items()):
        assert torch.equal(a.to(torch.bfloat16), b), name


def test_save_dtype_is_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match="save_dtype: must be one of"):
        train(tiny_args(tmp_path / "model", save_dtype="int8"))
    assert not (tmp_path / "model").exists()


def test_depth_residual_init_scales_the_residual_writes_only(tokenizer, tmp_path):
    """--residual-init depth: o_proj and down_proj start at 1/sqrt(2 * layers) of transformers' init
    (same seed), every other weight unchanged; an unknown value is refused before training."""
    from swaa_patch.demo.train import build_model

    args = tiny_args(tmp_path / "unused")
    plain = build_model(args, tokenizer)
    scaled = build_model(dataclasses.replace(args, residual_init="depth"), tokenizer)
    factor = (2 * args.num_layers) ** -0.5
    for (name, a), (_, b) in zip(plain.state_dict().items(), scaled.state_dict().items()):
        expected = a * factor if name.endswith(("o_proj.weight", "down_proj.weight")) else a
        assert torch.allclose(b, expected, rtol=1e-6, atol=0), name
    assert sum(n.endswith(("o_proj.weight", "down_proj.weight")) for n in plain.state_dict()) == 2 * args.num_layers
    with pytest.raises(ValueError, match="residual_init: must be unset or one of"):
        train(tiny_args(tmp_path / "model", residual_init="mup"))
    assert not (tmp_path / "model").exists()


def test_finished_output_is_not_retrained(trained):
    stamp = (trained / "model.safetensors").stat().st_mtime_ns
    assert train(tiny_args(trained)) == trained
    assert (trained / "model.safetensors").stat().st_mtime_ns == stamp


class Killed(Exception):
    pass


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path):
    steps = dict(max_steps=12, save_every=4, batch_size=2)
    whole = train(tiny_args(tmp_path / "whole", **steps))

    def kill_at_6(state):
        if state.step == 6:
            raise Killed

    args = tiny_args(tmp_path / "resumed", **steps)
    with pytest.raises(Killed):
        train(args, on_step=kill_at_6)
    assert not Path(args.output_dir).exists() and (checkpoint_dir(Path(args.output_dir)) / "state.pt").is_file()
    with pytest.raises(ValueError, match="another recipe"):
        train(dataclasses.replace(args, learning_rate=1e-3))  # the default is 5e-4

    resumed = train(args)
    a = AutoModelForCausalLM.from_pretrained(whole).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_shortens_the_schedule(tmp_path):
    output = train(tiny_args(tmp_path / "budget", max_steps=500, time_budget_s=2.0, batch_size=1))
    summary = json.loads((output / SUMMARY_FILE).read_text())
    # Sized after timing steps 5-55, or (on a very busy machine) cut by the hard stop before that.
    assert summary["steps"] < 500
    assert summary["max_steps"] < 500 or summary["stopped_by_budget"]


def test_settings_notes_are_ignored_and_unknown_keys_still_fail(trained, tmp_path):
    from swaa_patch.evaluation.settings import parse_settings
    from swaa_patch.jobs.validate import SettingsError

    run = {"swaa_config": None, "model_list": [str(trained)], "_why": "a note"}
    assert len(parse_settings({"settings": [run], "_about": "a note"}).runs) == 1
    with pytest.raises(SettingsError, match=r"settings\[0\]: unknown key\(s\) \['why'\]"):
        parse_settings({"settings": [{**run, "why": "not a note"}]})


def test_grow_from_keeps_the_source_function_then_trains(trained, tmp_path):
    """--grow-from: the 8-layer model built from the trained 4-layer one gives the source's logits exactly
    at step 0 (each repeated layer's residual writes are zero), uses the source's tokenizer, trains and
    records the source in its recipe."""
    from swaa_patch.demo.grow import grow_into, source_layer_map

    assert source_layer_map(4, 8) == [(0, True), (0, False), (1, True), (1, False),
                                      (2, True), (2, False), (3, True), (3, False)]
    assert source_layer_map(4, 6) == [(0, True), (0, False), (1, True), (2, True), (2, False), (3, True)]
    tok = AutoTokenizer.from_pretrained(trained)
    source = AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32).eval()
    grown = build_model(tiny_args(tmp_path / "unused", num_layers=8), tok)
    before = [layer.self_attn.q_proj.weight.clone() for layer in grown.model.layers]
    grow_into(grown, trained)
    grown.eval()
    ids = torch.randint(0, len(tok), (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(grown(input_ids=ids).logits, source(input_ids=ids).logits, atol=1e-5, rtol=0)
    assert torch.equal(grown.model.layers[3].self_attn.q_proj.weight, source.model.layers[1].self_attn.q_proj.weight)
    assert not torch.equal(grown.model.layers[3].self_attn.q_proj.weight, before[3])
    assert grown.model.layers[3].mlp.down_proj.weight.abs().sum() == 0
    assert grown.model.layers[2].mlp.down_proj.weight.abs().sum() > 0

    out = train(tiny_args(tmp_path / "grown", num_layers=8, grow_from=str(trained), max_steps=4, save_every=2))
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["args"]["grow_from"] == str(trained) and summary["steps"] == 4
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 8
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tok.get_vocab()


@pytest.mark.parametrize("overrides, message", [
    (dict(num_layers=2), "num_layers: must be at least the grow_from model's 4 layers, got 2"),
    (dict(num_layers=8, hidden_size=48, num_heads=3), "hidden_size: must equal the grow_from model's hidden_size"),
    (dict(num_layers=8, rope_theta=500.0), "rope_theta: must equal the grow_from model's"),
    (dict(num_layers=8, residual_init="depth"), "residual_init: must be unset with grow_from"),
])
def test_grow_from_refuses_a_source_it_cannot_grow(trained, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(tiny_args(tmp_path / "model", grow_from=str(trained), **overrides))
    assert not (tmp_path / "model").exists() and not checkpoint_dir(tmp_path / "model").exists()
    with pytest.raises(ValueError, match="grow_from: .* holds no config.json"):
        train(tiny_args(tmp_path / "model", num_layers=8, grow_from=str(tmp_path)))
