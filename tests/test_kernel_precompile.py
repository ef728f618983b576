"""training/kernel_precompile.py: recording a run's Triton compiles, checking a manifest, the worker
processes and what they report; and, on a GPU, the round trip: a kernel compiled by a worker from a
recorded manifest is found on disk by the next process's first launch (no compile left for it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("triton", reason="triton is not installed: no kernels to precompile")

from swaa_patch.training import kernel_precompile  # noqa: E402
from swaa_patch.training.checkpoints import NOT_RESULTS  # noqa: E402
from swaa_patch.training.kernel_precompile import FORMAT, Precompile, Recorder, read_manifest, start  # noqa: E402
from swaa_patch.training.settings import parse_training  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {"triton": "3.6.0", "arch": 90}


def compile_event(hook, module: str, name: str, data: str):
    """What Triton hands ``jit_cache_hook`` at a compile (its keyword arguments)."""
    fn = SimpleNamespace(module=module, name=name)
    return hook(key="k", repr="r", fn=fn, compile={"key": "k", "specialization_data": data},
                is_manual_warmup=False, already_compiled=False)  # fmt: skip


def write_manifest(path: Path, kernels: list, **env) -> Path:
    path.write_text(json.dumps({"format": FORMAT, **{**ENV, **env}, "kernels": kernels}))
    return path


def test_the_recorder_keeps_each_specialization_once_and_lets_triton_compile(tmp_path):
    from triton import knobs

    seen = []
    knobs.runtime.jit_cache_hook = lambda **kw: seen.append(kw["fn"].name)  # another tool's hook, kept working
    try:
        with Recorder() as recorder:
            assert compile_event(knobs.runtime.jit_cache_hook, "pkg.mod", "kernel_a", "spec-1") is None
            compile_event(knobs.runtime.jit_cache_hook, "pkg.mod", "kernel_a", "spec-1")  # a second launch
            compile_event(knobs.runtime.jit_cache_hook, "pkg.other", "kernel_b", "spec-2")
        assert knobs.runtime.jit_cache_hook is not recorder.hook  # restored on exit
        assert seen == ["kernel_a", "kernel_a", "kernel_b"]
    finally:
        knobs.runtime.jit_cache_hook = None
    assert recorder.entries == [
        {"module": "pkg.mod", "name": "kernel_a", "specialization": "spec-1"},
        {"module": "pkg.other", "name": "kernel_b", "specialization": "spec-2"},
    ]
    recorder.save(tmp_path / "m.json", ENV)
    assert read_manifest(tmp_path / "m.json", ENV) == recorder.entries


def test_a_hook_that_skips_the_compile_still_does(tmp_path):
    """A chained hook's answer (True: Triton skips the compile) is passed through, not replaced."""
    from triton import knobs

    knobs.runtime.jit_cache_hook = lambda **kw: True
    try:
        with Recorder():
            assert compile_event(knobs.runtime.jit_cache_hook, "m", "k", "s") is True
    finally:
        knobs.runtime.jit_cache_hook = None


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot be read"),
        ("{not json", "cannot be read"),
        (json.dumps({"format": 99, "kernels": []}), "not a format-1 manifest"),
        (json.dumps({"format": FORMAT, **ENV, "kernels": [{"module": "m", "name": "k"}]}), "kernels[0] needs"),
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


def test_workers_report_what_they_could_not_compile(tmp_path, monkeypatch):
    """Real worker processes (``python -m``) on entries that cannot load: each failure named, none fatal."""
    manifest = write_manifest(tmp_path / "m.json", [
        {"module": "no_such_module_here", "name": "kernel", "specialization": "{}"},
        {"module": "json", "name": "no_such_attribute", "specialization": "{}"},
    ])  # fmt: skip
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")  # workers inherit it
    monkeypatch.setattr(os, "cpu_count", lambda: 8)  # the worker count is capped at the cores less one
    summary = start(manifest, workers=2).wait(timeout=120)
    assert "precompiled 0 of 2 Triton kernels" in summary and "with 2 processes" in summary
    assert "no_such_module_here.kernel: ModuleNotFoundError" in summary
    assert "json.no_such_attribute: AttributeError" in summary


def test_a_worker_that_crashes_or_hangs_is_reported_not_waited_for_forever(tmp_path):
    crash = subprocess.Popen([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    hang = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    summary = Precompile(tmp_path / "m.json", 2, [crash, hang]).wait(timeout=5)
    assert "a worker exited 3: boom" in summary
    assert "a worker ran past 5 s and was stopped" in summary
    assert hang.poll() is not None


def test_the_setting_takes_auto_off_or_an_existing_manifest(tmp_path):
    manifest = write_manifest(tmp_path / "m.json", [])
    assert parse_training({}, "training").precompile_kernels == "auto"
    assert parse_training({"precompile_kernels": "off"}, "training").precompile_kernels == "off"
    chosen = parse_training({"precompile_kernels": "m.json"}, "training", tmp_path).precompile_kernels
    assert chosen == str(manifest)  # relative to the settings file's folder
    with pytest.raises(ValueError, match=r"training\.precompile_kernels: must be 'auto', 'off' or the path"):
        parse_training({"precompile_kernels": "missing.json"}, "training", tmp_path)
    assert "training.precompile_kernels" in NOT_RESULTS  # not a result setting: it may change on resume


def test_off_starts_nothing_and_auto_without_a_shipped_manifest_neither(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine as far as the choice goes
    monkeypatch.setattr(kernel_precompile, "environment", lambda: {"triton": "0.0.0-none", "arch": 1})
    assert kernel_precompile.start_for_training("off") is None
    assert kernel_precompile.start_for_training("auto") is None  # nothing shipped for sm1
    stale = write_manifest(tmp_path / "m.json", [])
    with pytest.raises(ValueError, match="made for"):  # a manifest of another machine is an error, not a no-op
        kernel_precompile.start_for_training(str(stale))
    monkeypatch.setenv("LOCAL_RANK", "1")  # a launch's second process on the machine: its first one compiles
    assert kernel_precompile.start_for_training(str(stale)) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert kernel_precompile.start_for_training(str(stale)) is None  # no GPU: nothing to compile for


def test_every_shipped_manifest_reads_and_names_its_environment():
    shipped = sorted(kernel_precompile.MANIFEST_DIR.glob("*.json"))
    for path in shipped:
        data = json.loads(path.read_text())
        env = {"triton": data["triton"], "arch": data["arch"]}
        assert kernel_precompile.shipped_manifest(env) == path
        assert read_manifest(path, env), path


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
    print(json.dumps({"new_files": len(after) - len(before)}))
    """
)


@pytest.mark.gpu
def test_a_worker_fills_the_cache_the_next_process_launches_from(tmp_path):
    """Record a launch's manifest; empty the cache; a worker precompiles it; a new process's first
    launch of the kernel then writes nothing to the cache (it was all there)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    (tmp_path / "precompile_probe_kernels.py").write_text(KERNEL_MODULE)
    (tmp_path / "launch.py").write_text(LAUNCH)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def launch(cache: str, *args: str) -> dict:
        out = subprocess.run([sys.executable, str(tmp_path / "launch.py"), *args], env={**env, "TRITON_CACHE_DIR": cache},
                             capture_output=True, text=True, check=True)  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])

    manifest = tmp_path / "manifest.json"
    assert launch(str(tmp_path / "cache_a"), str(manifest))["new_files"] > 0  # a cold compile writes the cache
    entries = json.loads(manifest.read_text())["kernels"]
    assert [e["name"] for e in entries] == ["add_one"]
    worker = subprocess.run([sys.executable, "-m", "swaa_patch.training.kernel_precompile", str(manifest), "0", "1"],
                            env={**env, "TRITON_CACHE_DIR": str(tmp_path / "cache_b")}, capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert json.loads(worker.stdout.strip().splitlines()[-1]) == {"compiled": 1, "failed": []}
    assert launch(str(tmp_path / "cache_b"))["new_files"] == 0  # kernel and launcher both came from the worker
    assert launch(str(tmp_path / "cache_c"))["new_files"] > 0  # control: an empty cache does get written
