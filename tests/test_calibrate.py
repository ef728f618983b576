"""`swaa calibrate`: scores against a direct computation, greedy re-scoring, budget errors, resume,
and the written config loading and running."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny import tiny_model

from swaa_patch import SWAAConfig, apply_swaa
from swaa_patch.calibration import run as run_module
from swaa_patch.calibration.measure import Example, answer_log_probs
from swaa_patch.calibration.run import run_calibration
from swaa_patch.calibration.search import greedy_select
from swaa_patch.calibration.settings import load_calibration_settings, parse_calibration, resolve_budget
from swaa_patch.cli import main as cli_main
from swaa_patch.compat import cache_kwargs, output_cache
from swaa_patch.evaluation.runner import run_eval
from swaa_patch.evaluation.settings import load_settings, parse_settings
from swaa_patch.jobs.builtin_models import TinySpec, build_tiny_model
from swaa_patch.jobs.errors import Interrupted, RunRefused, SettingsError
from swaa_patch.jobs.io import read_jsonl
from swaa_patch.jobs.loading import load_model, load_tokenizer
from swaa_patch.jobs.prompts import prompt_ids, response_ids

ROOT = Path(__file__).resolve().parents[1]
RECIPE = {"sliding_window_size": 8, "keep_first": 2, "force_fa_decode": False}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A 4-layer tiny Qwen3 with a real tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("calib") / "tiny4", TinySpec(num_hidden_layers=4))


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    """Prompts of 60-100 tokens (8-12 windows of 8) with short reference answers."""
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    filler = "The module reads its configuration from the environment and writes a log line. "
    rows = [{"id": f"q{i}", "prompt": f"The code is {4170 + 37 * i}. " + filler * (3 + i % 3) + "What is the code?",
             "answer": str(4170 + 37 * i)} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def settings_for(model_dir, qa_file, out, **extra):
    data = {"model": str(model_dir), "datasets": [str(qa_file)], "swaa_config": RECIPE, "output_dir": str(out),
            "calibrate": {"budget": 2, "target": "reference", "max_answer_tokens": 6}, "batch_size": 2,
            "dtype": "float32", "device": "cpu", **extra}
    return parse_calibration(data)


# -- the measurement ------------------------------------------------------------------------------
def decoded_log_probs(model, example: Example, swaa: SWAAConfig | None) -> torch.Tensor:
    """What generation computes: prefill the prompt, then feed the answer one token at a time."""
    apply_swaa(model, swaa)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([example.prompt_ids]), use_cache=True)
        steps = [out.logits[0, -1]]
        for token in example.answer_ids[:-1]:
            out = model(input_ids=torch.tensor([[token]]), use_cache=True, **cache_kwargs(model, output_cache(out)))
            steps.append(out.logits[0, -1])
    return torch.log_softmax(torch.stack(steps).float(), dim=-1)


@pytest.mark.parametrize("fad", [False, True])
@pytest.mark.parametrize("full", [(), (1, 3)])
def test_teacher_forced_log_probs_equal_token_by_token_decoding(fad, full):
    model = tiny_model("qwen3")
    generator = torch.Generator().manual_seed(0)
    examples = [Example(f"e{i}", "d", tuple(torch.randint(3, 96, (n,), generator=generator).tolist()),
                        tuple(torch.randint(3, 96, (a,), generator=generator).tolist()))
                for i, (n, a) in enumerate([(40, 5), (23, 7), (31, 1)])]
    swaa = SWAAConfig(sliding_window_size=6, keep_first=2, force_fa_decode=fad, non_sliding_layers=full)
    batched = answer_log_probs(model, examples, swaa, pad_id=0)  # left-padded batch of three
    stock = answer_log_probs(model, examples, None, pad_id=0)
    for example, got, ref in zip(examples, batched, stock):
        want = decoded_log_probs(model, example, swaa)
        assert got.shape == want.shape == (len(example.answer_ids), 96)
        assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()
        assert torch.allclose(ref, decoded_log_probs(model, example, None), atol=2e-5)
    if full == ():  # the window cuts these prompts: sliding must change something
        assert max((g - r).abs().max() for g, r in zip(batched, stock)) > 1e-3


def direct_scores(model, tokenizer, qa_file, full_layers) -> tuple[float, float, float]:
    """KL, NLL and the stock NLL of the reference answers, one unpadded example at a time."""
    kls, nlls, ref_nlls = [], [], []
    swaa = SWAAConfig(**RECIPE, non_sliding_layers=full_layers)
    for row in read_jsonl(qa_file):
        prompt = prompt_ids(tokenizer, row["prompt"], True)
        answer = response_ids(tokenizer, row["prompt"], row["answer"], True)[:6]
        ids = torch.tensor([prompt + answer])
        positions = torch.arange(len(prompt) - 1, len(prompt) + len(answer) - 1)
        with torch.no_grad():
            ref = torch.log_softmax(apply_swaa(model, None)(input_ids=ids).logits[0, positions].double(), -1)
            got = torch.log_softmax(apply_swaa(model, swaa)(input_ids=ids).logits[0, positions].double(), -1)
        targets = torch.tensor(answer)
        kls.append(float((ref.exp() * (ref - got)).sum(-1).mean()))
        nlls.append(float(-got[torch.arange(len(answer)), targets].mean()))
        ref_nlls.append(float(-ref[torch.arange(len(answer)), targets].mean()))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return mean(kls), mean(nlls), mean(ref_nlls)


def test_layer_scores_are_the_direct_computation(model_dir, qa_file, tmp_path):
    result = run_calibration(settings_for(model_dir, qa_file, tmp_path / "out"))
    model = load_model(str(model_dir), "float32", "sdpa", "cpu")
    tokenizer = load_tokenizer(str(model_dir))
    for row in result["sensitivity"]:
        kl, nll, ref_nll = direct_scores(model, tokenizer, qa_file, [x for x in range(4) if x != row["layer"]])
        assert row["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-7)
        assert row["delta_nll"] == pytest.approx(nll - ref_nll, rel=1e-4, abs=1e-6)
    assert result["reference"]["nll"] == pytest.approx(ref_nll, rel=1e-5)
    kl, _, _ = direct_scores(model, tokenizer, qa_file, list(result["non_sliding_layers"]))
    assert result["calibrated"]["kl"] == pytest.approx(kl, rel=1e-4)
    assert result["all_sliding"]["kl"] > 1e-3  # the window (8) cuts these prompts


# -- the choice -----------------------------------------------------------------------------------
def test_greedy_rescores_after_each_pick():
    # Layers 0 and 1 carry the same path (either one fixes most of it, both add little); layer 2
    # carries another. Ranked alone, 0 and 1 come first; re-scored, 2 beats 1 as the second pick.
    damage = {(): 10.0, (0,): 1.0, (1,): 1.1, (2,): 6.0, (3,): 9.9, (0, 1): 0.9, (0, 2): 0.2, (0, 3): 0.95}
    steps = greedy_select(4, 2, lambda layers: damage[tuple(sorted(layers))])
    assert [s.chosen for s in steps] == [0, 2]
    assert steps[1].candidates == {1: 0.9, 2: 0.2, 3: 0.95} and steps[1].before == (0,)
    assert [s.chosen for s in greedy_select(3, 1, lambda layers: 1.0)] == [0]  # ties: the lower index


def test_the_only_layer_whose_attention_matters_is_chosen(model_dir, qa_file, tmp_path):
    # Zero the attention output of layers 0, 1 and 3: sliding there cannot change anything, so
    # layer 2 is the one whose absence hurts, and the only one the calibration may pick.
    model = load_model(str(model_dir), "float32", "sdpa", "cpu")
    with torch.no_grad():
        for index in (0, 1, 3):
            model.model.layers[index].self_attn.o_proj.weight.zero_()
    folder = tmp_path / "one_attention_layer"
    model.save_pretrained(folder)
    load_tokenizer(str(model_dir)).save_pretrained(folder)
    result = run_calibration(settings_for(folder, qa_file, tmp_path / "out", calibrate={"budget": 1,
                                                                                      "target": "teacher",
                                                                                      "max_answer_tokens": 4}))
    assert result["non_sliding_layers"] == [2]
    alone = {row["layer"]: row["kl"] for row in result["sensitivity"]}
    assert alone[2] > 1e-3 and max(alone[i] for i in (0, 1, 3)) < 1e-9
    assert result["calibrated"]["kl"] < 1e-9


# -- settings -------------------------------------------------------------------------------------
@pytest.mark.parametrize("patch, message", [
    ({"calibrate": {"budget": 0}}, "calibrate.budget: must be an integer >= 1, got 0"),
    ({"calibrate": {"budget": 1.5}}, "calibrate.budget: must be a number of layers (integer >= 1) or a fraction"),
    ({"calibrate": {"budget": True}}, "calibrate.budget: must be a number of layers"),
    ({"calibrate": {"metric": "mse"}}, "calibrate.metric: must be one of ['kl', 'nll'], got 'mse'"),
    ({"calibrate": {"target": "gold"}}, "calibrate.target: must be one of ['teacher', 'reference']"),
    ({"calibrate": {"max_answer_tokens": 0}}, "calibrate.max_answer_tokens: must be an integer >= 1"),
    ({"calibrate": {"budgit": 2}}, "calibrate: unknown key(s) ['budgit']"),
    ({"swaa_config": {**RECIPE, "non_sliding_layers": [1]}}, "swaa_config.non_sliding_layers: must be empty"),
    ({"swaa_config": {"sliding_window_size": None}}, "swaa_config.sliding_window_size: must be an integer >= 1"),
    ({"swaa_config": {**RECIPE, "keep_first": -1}}, "swaa_config.keep_first: must be an integer >= 0, got -1"),
    ({"truncation": "left"}, "truncation: must be one of ['middle', 'skip']"),
    ({"max_new_tokens": 4}, "settings file: unknown key(s) ['max_new_tokens']"),
])
def test_settings_errors_name_the_json_path(model_dir, qa_file, tmp_path, patch, message):
    raw = {"model": str(model_dir), "datasets": [str(qa_file)], "swaa_config": RECIPE, **patch}
    with pytest.raises(SettingsError) as err:
        parse_calibration(raw)
    assert message in str(err.value)


@pytest.mark.parametrize("budget, layers, want", [(2, 4, 2), (0.5, 4, 2), (0.5, 36, 18), (0.6, 4, 2), (3, 4, 3)])
def test_budget_resolves_to_a_layer_count(budget, layers, want):
    assert resolve_budget(budget, layers) == want


@pytest.mark.parametrize("patch, message", [
    ({"calibrate": {"budget": 4}},
     "calibrate.budget: must give between 1 and 3 full layers for this model (4 layers), got 4"),
    ({"calibrate": {"budget": 0.2}},
     "calibrate.budget: must give between 1 and 3 full layers for this model (4 layers) (0.2 of 4 layers is 0)"),
    ({"swaa_config": {**RECIPE, "force_fa_decode": [1, 4]}},
     "swaa_config.force_fa_decode: layer indices must be in [0, 3] for this model (4 layers), got [4]"),
])
def test_layers_outside_the_model_are_refused_before_weights_load(model_dir, qa_file, tmp_path, monkeypatch,
                                                                    caplog, patch, message):
    monkeypatch.setattr(run_module, "load_model", lambda *a: pytest.fail("weights loaded before the layer check"))
    path = tmp_path / "calibrate.json"
    path.write_text(json.dumps({"model": str(model_dir), "datasets": [str(qa_file)], "swaa_config": RECIPE,
                                "output_dir": str(tmp_path / "out"), **patch}))
    with caplog.at_level(logging.ERROR):
        assert cli_main(["calibrate", str(path)]) == 2
    assert message in caplog.text


def test_shipped_demo_settings_parse():
    settings = load_calibration_settings(ROOT / "settings" / "demo_calibrate.json")
    assert settings.calibrate.budget == 4 and settings.swaa_config.sliding_window_size == 64
    assert all(spec.seed == 3 for spec in settings.datasets)  # neither test (0), monitoring (1) nor distill (2)


def test_shipped_layer_sets_hold_only_full_attention():
    """benchmarks/calibration_demo.py adds the compared sets' rows to this base (and refuses a base with more)."""
    runs = load_settings(ROOT / "settings" / "demo_layer_sets.json").runs
    assert [run.swaa_config for run in runs] == [None]


# -- resume -----------------------------------------------------------------------------------------
class Crash(RuntimeError):
    pass


def test_resume_scores_only_missing_sets_and_refuses_other_settings(model_dir, qa_file, tmp_path, monkeypatch):
    out = tmp_path / "out"
    scored: list[frozenset] = []

    def crash_after_three(layers):
        scored.append(layers)
        if len(scored) == 3:
            raise Crash("simulated kill")

    settings = settings_for(model_dir, qa_file, out, calibrate={"budget": 2, "target": "teacher", "max_answer_tokens": 4})
    with pytest.raises(Crash):
        run_calibration(settings, on_unit=crash_after_three)
    first = list(scored)
    answers = read_jsonl(out / "targets" / "qa.jsonl")
    assert len(json.loads((out / "scores.json").read_text())["sets"]) == 3 and len(answers) == 5

    scored.clear()
    result = run_calibration(settings, on_unit=scored.append)
    assert not set(first) & set(scored)  # nothing scored twice
    assert len(first) + len(scored) == len(result["sets"]) == 4 + 1 + 4 + 3
    assert read_jsonl(out / "targets" / "qa.jsonl") == answers  # teacher answers not regenerated

    # The other metric reuses every set both choices share: at most the second step's are new.
    scored.clear()
    run_calibration(replace(settings, calibrate=replace(settings.calibrate, metric="nll")), on_unit=scored.append)
    assert all(len(layers) == 2 for layers in scored)

    # Everything known: a rerun never loads the model.
    monkeypatch.setattr(run_module, "load_model", lambda *a: pytest.fail("model loaded for a finished run"))
    again = run_calibration(settings, on_unit=lambda layers: pytest.fail(f"re-scored {layers}"))
    assert again["non_sliding_layers"] == result["non_sliding_layers"]

    changed = replace(settings, swaa_config=SWAAConfig(**{**RECIPE, "keep_first": 0}))
    with pytest.raises(RunRefused, match="other settings \\(recipe .*--recompute"):
        run_calibration(changed)
    monkeypatch.undo()
    scored.clear()
    assert run_calibration(changed, on_unit=scored.append, recompute=True)["swaa_config"]["keep_first"] == 0
    assert len(scored) == len(result["sets"])  # everything scored again, with the new recipe
    assert len(read_jsonl(out / "targets" / "qa.jsonl")) == 5  # and the teacher answers made again


# -- the long-job rules -------------------------------------------------------------------------------
def test_ctrl_c_says_what_is_scored_and_a_rerun_resumes(model_dir, qa_file, tmp_path):
    settings = settings_for(model_dir, qa_file, tmp_path / "out")
    scored: list[frozenset] = []

    def interrupt_after_two(layers):
        scored.append(layers)
        if len(scored) == 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match=r"^interrupted: 2 layer sets scored in .*run the same command again"):
        run_calibration(settings, on_unit=interrupt_after_two)
    assert len(run_calibration(settings, on_unit=scored.append)["sets"]) == len(scored) == 4 + 1 + 4 + 3


def write_settings(path: Path, **data) -> Path:
    path.write_text(json.dumps({"swaa_config": RECIPE, **data}))
    return path


def test_bad_data_and_foreign_folders_are_one_line_errors(model_dir, qa_file, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(run_module, "load_model", lambda *a: pytest.fail("model loaded"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(qa_file.read_text() + '{"id": "x", "prompt": 3}\n')
    out = tmp_path / "out"
    settings = write_settings(tmp_path / "bad.json", model=str(model_dir), datasets=[str(bad)], output_dir=str(out))
    with caplog.at_level(logging.ERROR):
        assert cli_main(["calibrate", str(settings)]) == 2
    assert f"invalid settings: datasets[0]: dataset {bad}:6" in caplog.text and not out.exists()

    (out / "responses").mkdir(parents=True)
    settings = write_settings(tmp_path / "ok.json", model=str(model_dir), datasets=[str(qa_file)], output_dir=str(out))
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert cli_main(["calibrate", str(settings)]) == 2
    assert f"output_dir {out} holds a swaa eval run; use another folder, or --force" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["responses"]


# -- the output -------------------------------------------------------------------------------------
def test_written_config_loads_and_runs_in_swaa_eval(model_dir, qa_file, tmp_path):
    out = tmp_path / "out"
    path = tmp_path / "calibrate.json"
    path.write_text(json.dumps({"model": str(model_dir), "datasets": [str(qa_file)], "swaa_config": RECIPE,
                                "calibrate": {"budget": 0.5, "max_answer_tokens": 4}, "output_dir": str(out), "dtype": "float32"}))
    assert cli_main(["calibrate", str(path)]) == 0
    config = SWAAConfig.from_dict(json.loads((out / "swaa_config.json").read_text()))
    result = json.loads((out / "calibration.json").read_text())
    assert list(config.non_sliding_layers) == result["non_sliding_layers"] and len(config.non_sliding_layers) == 2
    assert (config.sliding_window_size, config.keep_first, config.force_fa_decode) == (8, 2, False)
    report = (out / "report.md").read_text()
    assert "## Per-layer sensitivity" in report and f"non_sliding_layers = {result['non_sliding_layers']}" in report
    assert (out / "plots" / "layer_scores.png").read_bytes()[:4] == b"\x89PNG"

    eval_settings = parse_settings({"settings": [{"swaa_config": json.loads((out / "swaa_config.json").read_text()),
                                                  "model_list": [str(model_dir)]}],
                                    "datasets": [str(qa_file)], "output_dir": str(tmp_path / "eval"),
                                    "max_new_tokens": 4, "limit": 2, "dtype": "float32", "device": "cpu"})
    metrics = run_eval(eval_settings)
    assert len(metrics) == 1 and metrics[0]["non_sliding_layers"] == result["non_sliding_layers"]
