"""training/kernel_precompile.py: checking a manifest and the setting; the forked workers (each entry
compiled once, by a worker, failures and crashes and hangs reported, workers ended when there is
nothing to compile or the run fails); `run_sft` forks before its first CUDA call; recording a run's
Triton compiles (with Triton); and, on a GPU, the round trip: forked workers that cannot reach the
GPU fill the cache from a recorded manifest and the next process's first launch compiles nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from swaa_patch.training import kernel_precompile, sft
from swaa_patch.training.checkpoints import NOT_RESULTS
from swaa_patch.training.kernel_precompile import FORMAT, Recorder, fork, read_manifest, worker
from swaa_patch.training.settings import parse_training

ROOT = Path(__file__).resolve().parents[1]
ENV = {"triton": "3.6.0", "arch": 90}


def write_manifest(path: Path, kernels: list, **env) -> Path:
    path.write_text(json.dumps({"format": FORMAT, **{**ENV, **env}, "kernels": kernels}))
    return path


def entry(name: str) -> dict[str, str]:
    return {"module": "fake.module", "name": name, "specialization": "{}"}


# -- the manifest and the setting -------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot be read"),
        ("{not json", "cannot be read"),
        (json.dumps({"format": 99, "kernels": []}), "not a format-1 manifest"),
        (
            json.dumps({"format": FORMAT, **ENV, "kernels": [{"module": "m", "name": "k"}]}),
            "kernels[0] needs",
        ),
        (json.dumps({"format": FORMAT, "triton": "3.5.0", "arch": 90, "kernels": []}), "made for"),
        (json.dumps({"format": FORMAT, "triton": "3.6.0", "arch": 80, "kernels": []}), "this machine has"),
    ],
)
def test_a_manifest_that_cannot_serve_is_refused_by_name(tmp_path, content, message):
    path = tmp_path / "manifest.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        read_manifest(path, ENV)
    assert str(path) in str(err.value)


def test_the_setting_takes_auto_off_or_an_existing_manifest(tmp_path):
    manifest = write_manifest(tmp_path / "m.json", [])
    assert parse_training({}, "training").precompile_kernels == "auto"
    assert parse_training({"precompile_kernels": "off"}, "training").precompile_kernels == "off"
    chosen = parse_training({"precompile_kernels": "m.json"}, "training", tmp_path).precompile_kernels
    assert chosen == str(manifest)  # relative to the settings file's folder
    with pytest.raises(ValueError, match=r"training\.precompile_kernels: must be 'auto', 'off' or the path"):
        parse_training({"precompile_kernels": "missing.json"}, "training", tmp_path)
    assert "training.precompile_kernels" in NOT_RESULTS  # not a result setting: it may change on resume


def test_every_shipped_manifest_reads_and_names_its_environment():
    shipped = sorted(kernel_precompile.MANIFEST_DIR.glob("*.json"))
    assert shipped, "no manifest shipped"
    for path in shipped:
        data = json.loads(path.read_text())
        env = {"triton": data["triton"], "arch": data["arch"]}
        assert kernel_precompile.shipped_manifest(env) == path
        assert read_manifest(path, env), path


def test_which_manifest_auto_off_or_a_path_hands_out(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine as far as the choice goes
    monkeypatch.setattr(kernel_precompile, "environment", lambda: dict(ENV))
    monkeypatch.setattr(kernel_precompile, "MANIFEST_DIR", tmp_path / "shipped")
    assert kernel_precompile.manifest_for("off") is None
    assert kernel_precompile.manifest_for("auto") is None  # nothing shipped for this machine
    (tmp_path / "shipped").mkdir()
    shipped = write_manifest(tmp_path / "shipped" / "sm90-triton3.6.0.json", [entry("a")])
    assert kernel_precompile.manifest_for("auto") == (shipped, [entry("a")], 90)
    stale = write_manifest(tmp_path / "stale.json", [entry("a")], arch=80)
    # a manifest of another machine is an error, not a no-op
    with pytest.raises(ValueError, match="made for"):
        kernel_precompile.manifest_for(str(stale))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert kernel_precompile.manifest_for(str(stale)) is None  # no GPU: nothing to compile for


def test_no_workers_for_off_a_cpu_torch_or_a_launchs_other_processes(monkeypatch):
    monkeypatch.setattr(kernel_precompile, "fork", lambda count: ("forked", count))
    monkeypatch.setattr(torch.cuda, "_is_compiled", lambda: True)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())  # Triton installed
    assert kernel_precompile.fork_workers("auto") == ("forked", kernel_precompile.MAX_WORKERS)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert kernel_precompile.fork_workers("auto") == ("forked", 3)  # one core left to the training process
    assert kernel_precompile.fork_workers("off") is None
    monkeypatch.setenv("LOCAL_RANK", "1")  # a launch's second process on the machine: its first one compiles
    assert kernel_precompile.fork_workers("auto") is None
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert kernel_precompile.fork_workers("auto") is None  # no Triton: no kernels of its to compile
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    monkeypatch.setattr(torch.cuda, "_is_compiled", lambda: False)
    assert kernel_precompile.fork_workers("auto") is None  # a CPU build of torch


# -- the forked workers ----------------------------------------------------------------------------
def fake_compile(log: Path):
    """A compile_entry that appends "pid name" to ``log``; "bad" raises, "crash" kills its process,
    "slow" sleeps a minute."""

    def compile_entry(item: dict[str, str], arch: int) -> None:
        name = item["name"]
        if name == "bad":
            raise RuntimeError("no such kernel")
        if name == "crash":
            os._exit(3)
        if name == "slow":
            time.sleep(60)
        with log.open("a") as f:
            f.write(f"{os.getpid()} {name} {arch}\n")

    return compile_entry


def hand_out(monkeypatch, tmp_path, names: list[str], workers: int):
    """Fork ``workers`` workers, then hand them a manifest of ``names`` (as build_trainer does)."""
    log = tmp_path / "compiled.log"
    monkeypatch.setattr(kernel_precompile, "compile_entry", fake_compile(log))  # the children inherit it
    monkeypatch.setattr(kernel_precompile, "build_driver_utils", lambda: fake_compile(log)(entry("utils"), 0))
    monkeypatch.setattr(kernel_precompile, "manifest_for",
                        lambda setting: (tmp_path / "m.json", [entry(n) for n in names], 90))  # fmt: skip
    precompile = fork(workers)
    precompile.assign("m.json")
    return precompile, log


def test_each_entry_is_compiled_once_by_a_forked_worker(monkeypatch, tmp_path):
    names = [f"k{i}" for i in range(7)]
    precompile, log = hand_out(monkeypatch, tmp_path, names, workers=3)
    time.sleep(1.5)  # the training process asks later than the workers finish: their own time is reported
    summary = precompile.wait(timeout=60)
    done, collected = (float(x) for x in re.search(r"done (\S+) s after they were handed out \(collected at (\S+) s\)",
                                                   summary).groups())  # fmt: skip
    assert done < collected and collected >= 1.5
    assert summary.startswith(
        f"precompiled 7 of 7 Triton kernels from {tmp_path / 'm.json'} in 3 forked processes"
    )
    rows = [line.split() for line in log.read_text().splitlines()]
    # each once, Triton's driver module too, for the GPU the training process read
    assert sorted(name for _, name, _ in rows) == sorted([*names, "utils"])
    pids = {pid for pid, _, _ in rows}
    assert len(pids) == 3 and str(os.getpid()) not in pids  # in the workers, a share each
    assert {arch for _, name, arch in rows if name != "utils"} == {"90"}
    assert all(not process.is_alive() for process, _ in precompile.workers)
    assert precompile.summary == summary and precompile.wait() is None  # waited for once


def test_failures_crashes_and_hangs_are_reported_and_never_stall_training(monkeypatch, tmp_path):
    precompile, log = hand_out(monkeypatch, tmp_path, ["bad", "crash", "slow", "ok"], workers=4)
    begun = time.monotonic()
    summary = precompile.wait(timeout=5)
    assert time.monotonic() - begun < 20  # the slow one was stopped, not waited for
    assert "precompiled 1 of 4" in summary
    assert "fake.module.bad: RuntimeError: no such kernel" in summary
    assert "a worker exited 3 without a report" in summary
    assert "a worker ran past 5 s and was stopped" in summary
    assert sorted(line.split()[1] for line in log.read_text().splitlines()) == ["ok", "utils"]
    assert all(not process.is_alive() for process, _ in precompile.workers)


def test_with_nothing_to_compile_the_workers_are_ended(monkeypatch):
    monkeypatch.setattr(kernel_precompile, "manifest_for", lambda setting: None)
    precompile = fork(2)
    precompile.assign("auto")
    assert all(not process.is_alive() for process, _ in precompile.workers)
    assert precompile.wait() is None


def test_a_manifest_that_does_not_fit_ends_the_workers_and_names_the_file(monkeypatch, tmp_path):
    stale = write_manifest(tmp_path / "stale.json", [entry("a")], arch=80)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kernel_precompile, "environment", lambda: dict(ENV))
    precompile = fork(2)
    with pytest.raises(ValueError, match=re.escape(f"kernel manifest {stale}: made for")):
        precompile.assign(str(stale))
    assert all(not process.is_alive() for process, _ in precompile.workers)


def test_a_worker_never_handed_anything_goes_away_by_itself(monkeypatch):
    """The training process died between the fork and the hand-out: its workers do not outlive it."""
    monkeypatch.setattr(kernel_precompile, "WAIT_S", 0.5)
    here, there = kernel_precompile.multiprocessing.get_context("fork").Pipe()
    begun = time.monotonic()
    worker(there)
    assert time.monotonic() - begun < 5
    here.close()


def test_run_sft_forks_before_its_first_cuda_call_and_ends_the_workers_when_it_fails(monkeypatch, tmp_path):
    calls = []

    class Workers:
        def stop(self):
            calls.append("stop")

    def fork_workers(setting):
        calls.append(f"fork {setting}")
        return Workers()

    def is_available():
        calls.append("cuda")
        return False

    def train_in_folder(settings, callbacks, state, precompile):
        assert isinstance(precompile, Workers)  # handed on to build_trainer
        raise RuntimeError("the model did not load")

    monkeypatch.setattr(kernel_precompile, "fork_workers", fork_workers)
    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    monkeypatch.setattr(sft, "train_in_folder", train_in_folder)
    settings = SimpleNamespace(
        output_dir=str(tmp_path / "out"), training=SimpleNamespace(precompile_kernels="auto")
    )
    with pytest.raises(RuntimeError, match="the model did not load"):
        sft.run_sft(settings)
    assert calls[0] == "fork auto" and "cuda" in calls and calls[-1] == "stop"


# -- recording (needs Triton) ------------------------------------------------------------------------
def compile_event(hook, module: str, name: str, data: str):
    """What Triton hands ``jit_cache_hook`` at a compile (its keyword arguments)."""
    fn = SimpleNamespace(module=module, name=name)
    return hook(key="k", repr="r", fn=fn, compile={"key": "k", "specialization_data": data},
                is_manual_warmup=False, already_compiled=False)  # fmt: skip


def test_the_recorder_keeps_each_specialization_once_and_lets_triton_compile(tmp_path):
    knobs = pytest.importorskip("triton").knobs
    seen = []
    knobs.runtime.jit_cache_hook = lambda **kw: seen.append(kw["fn"].name)  # another tool's hook, kept
    try:
        with Recorder() as recorder:
            assert compile_event(knobs.runtime.jit_cache_hook, "pkg.mod", "kernel_a", "spec-1") is None
            compile_event(knobs.runtime.jit_cache_hook, "pkg.mod", "kernel_a", "spec-1")  # a second launch
            compile_event(knobs.runtime.jit_cache_hook, "pkg.other", "kernel_b", "spec-2")
        assert knobs.runtime.jit_cache_hook is not recorder.hook  # restored on exit
        assert seen == ["kernel_a", "kernel_a", "kernel_b"]
        knobs.runtime.jit_cache_hook = lambda **kw: True  # a hook that skips the compile still does
        with Recorder():
            assert compile_event(knobs.runtime.jit_cache_hook, "m", "k", "s") is True
    finally:
        knobs.runtime.jit_cache_hook = None
    assert recorder.entries == [
        {"module": "pkg.mod", "name": "kernel_a", "specialization": "spec-1"},
        {"module": "pkg.other", "name": "kernel_b", "specialization": "spec-2"},
    ]
    recorder.save(tmp_path / "m.json", ENV)
    assert read_manifest(tmp_path / "m.json", ENV) == recorder.entries


# -- the round trip on a GPU -----------------------------------------------------------------------
KERNEL_MODULE = textwrap.dedent(
    """
    import triton
    import triton.language as tl


    @triton.jit
    def add_one(x_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) + 1, mask=offs < n)
    """
)

LAUNCH = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from pathlib import Path
    from swaa_patch.training.kernel_precompile import Recorder, environment
    import precompile_probe_kernels as kernels

    cache = Path(os.environ["TRITON_CACHE_DIR"])
    before = sorted(str(p) for p in cache.rglob("*")) if cache.exists() else []
    x = torch.zeros(1000, device="cuda")
    with Recorder() as recorder:
        kernels.add_one[(4,)](x, 1000, BLOCK=256)
    torch.cuda.synchronize()
    assert float(x.sum()) == 1000.0
    if len(sys.argv) > 1:
        recorder.save(Path(sys.argv[1]), environment())
    after = sorted(str(p) for p in cache.rglob("*"))
    print(json.dumps({"new_files": sorted(set(after) - set(before))}))
    """
)

PRECOMPILE = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from swaa_patch.training import kernel_precompile


    def gpu_out_of_reach(conn):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # any CUDA call in the worker would now fail
        kernel_precompile.worker(conn)


    workers = kernel_precompile.fork(1, target=gpu_out_of_reach)  # as run_sft: before the first CUDA call
    assert torch.cuda.is_available()
    workers.assign(sys.argv[1])
    print(json.dumps({"summary": workers.wait(timeout=300)}))
    """
)


@pytest.mark.gpu
def test_forked_workers_fill_the_cache_the_next_process_launches_from(tmp_path):
    """Record a launch's manifest; with an empty cache, workers forked as run_sft forks them (unable to
    reach the GPU) compile it; a new process's first launch then writes nothing to the cache."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    for name, text in (("precompile_probe_kernels.py", KERNEL_MODULE), ("launch.py", LAUNCH),
                       ("precompile.py", PRECOMPILE)):  # fmt: skip
        (tmp_path / name).write_text(text)
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }

    def run(script: str, cache: str, *args: str) -> dict:
        out = subprocess.run([sys.executable, str(tmp_path / script), *args], env={**env, "TRITON_CACHE_DIR": cache},
                             capture_output=True, text=True, check=True)  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])

    manifest = tmp_path / "manifest.json"
    # a cold compile writes the cache
    assert run("launch.py", str(tmp_path / "cache_a"), str(manifest))["new_files"]
    assert [e["name"] for e in json.loads(manifest.read_text())["kernels"]] == ["add_one"]
    summary = run("precompile.py", str(tmp_path / "cache_b"), str(manifest))["summary"]
    assert summary.startswith("precompiled 1 of 1 Triton kernels") and "not precompiled" not in summary, (
        summary
    )
    # kernel and launcher both came from the workers; control: an empty cache does get written
    assert run("launch.py", str(tmp_path / "cache_b"))["new_files"] == []
    assert run("launch.py", str(tmp_path / "cache_c"))["new_files"]
