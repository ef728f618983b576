"""Compile a training run's Triton kernels before its first step, in parallel worker processes.

Why: on a fresh machine the first `swaa sft` step compiles every Triton kernel it launches (SWAA's
sink kernels, Liger's, trl's fused LM head: 13 kernels, 26 compiles and launcher builds, 7.8-12.8 s
on an H200, benchmarks/results/sft_first_step.md) one after another. Threads do not help: the
compiler's Python front end holds the GIL (tried: an in-process pool compiled them one at a time in
effect). Processes do. A *manifest* lists what a run compiled, one entry per kernel variant: its
module, name and Triton's own serialized specialization (what ``triton.knobs.runtime.jit_cache_hook``
is handed at each compile). Worker processes ``JITFunction.preload`` their share of it into Triton's
on-disk cache and build the launchers while the training process loads the model; the first step
then finds every kernel on disk (0.5 s for all 26 in the kept-cache probe).

Every GPU run records its own manifest (``OUTPUT/kernel_manifest.json``); the ones shipped in
``kernel_manifests/`` (named by GPU architecture and Triton version) are used by default on a
machine that matches. A manifest never changes results: a kernel it lacks, or whose entry no longer
fits the installed code, is compiled at its first launch exactly as without one. What it can cost
is the workers' time, which the training process waits for (bounded by ``WAIT_S``) before its first
step.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..jobs.io import atomic_write_json

logger = logging.getLogger(__name__)

MANIFEST_DIR = Path(__file__).with_name("kernel_manifests")
RECORDED_NAME = "kernel_manifest.json"  # in a run's output folder
FORMAT = 1
MAX_WORKERS = 8
WAIT_S = 300.0  # the most a training process waits for its workers (a hung compiler does not stall training)


def environment() -> dict[str, Any]:
    """What a manifest must match: Triton's version and the current GPU's architecture."""
    import torch
    import triton

    major, minor = torch.cuda.get_device_capability()
    return {"triton": triton.__version__, "arch": major * 10 + minor}


def shipped_manifest(env: dict[str, Any]) -> Path:
    """The manifest shipped for this environment's GPU architecture and Triton version (may not exist)."""
    return MANIFEST_DIR / f"sm{env['arch']}-triton{env['triton']}.json"


# -- recording ------------------------------------------------------------------------------------
@dataclass
class Recorder:
    """Collects every Triton compile of this process (a disk-cache hit included) while installed."""

    entries: list[dict[str, str]] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)
    _previous: Any = None

    def hook(self, *, fn, compile, **kwargs) -> bool | None:
        data = compile["specialization_data"]
        if data not in self._seen:
            self._seen.add(data)
            self.entries.append({"module": fn.module, "name": fn.name, "specialization": data})
        previous = self._previous
        return previous(fn=fn, compile=compile, **kwargs) if previous is not None else None  # None: compile

    def __enter__(self) -> Recorder:
        from triton import knobs

        self._previous = knobs.runtime.jit_cache_hook
        knobs.runtime.jit_cache_hook = self.hook
        return self

    def __exit__(self, *exc) -> None:
        from triton import knobs

        knobs.runtime.jit_cache_hook = self._previous

    def save(self, path: Path, env: dict[str, Any]) -> None:
        atomic_write_json(path, {"format": FORMAT, **env, "kernels": self.entries})


# -- reading and checking -------------------------------------------------------------------------
def read_manifest(path: Path, env: dict[str, Any]) -> list[dict[str, str]]:
    """The manifest's kernel entries; ValueError naming the file when it is unreadable or made for
    another Triton version or GPU architecture (its specializations would not load there)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"kernel manifest {path}: cannot be read ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("kernels"), list):
        raise ValueError(f"kernel manifest {path}: not a format-{FORMAT} manifest (a 'kernels' list)")
    made = {key: data.get(key) for key in env}
    if made != env:
        raise ValueError(f"kernel manifest {path}: made for {made}, this machine has {env}")
    for i, entry in enumerate(data["kernels"]):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("module", "name",
                                                                                           "specialization")):
            raise ValueError(f"kernel manifest {path}: kernels[{i}] needs string 'module', 'name' and "
                             f"'specialization'")  # fmt: skip
    return data["kernels"]


# -- the workers ----------------------------------------------------------------------------------
def jit_function(module: str, name: str):
    """The JITFunction ``module.name`` (through autotune / heuristics wrappers, which keep it as ``fn``)."""
    from triton.runtime.jit import JITFunction

    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    while not isinstance(obj, JITFunction):
        obj = obj.fn
    return obj


def compile_entry(entry: dict[str, str]) -> None:
    """Compile one manifest entry into Triton's cache and build its launcher (both reused from disk by
    the training process)."""
    kernel = jit_function(entry["module"], entry["name"]).preload(entry["specialization"])
    init = getattr(kernel, "_init_handles", None)
    if init is not None:
        init()


def worker_main(argv: list[str]) -> int:
    """``python -m swaa_patch.training.kernel_precompile MANIFEST INDEX COUNT``: compile entries
    INDEX, INDEX + COUNT, ... of MANIFEST; print one JSON line: compiled and failed counts, the
    failures' reasons."""
    path, index, count = argv[0], int(argv[1]), int(argv[2])
    entries = json.loads(Path(path).read_text())["kernels"][index::count]
    compiled, failed = 0, []
    for entry in entries:
        try:
            compile_entry(entry)
            compiled += 1
        except Exception as err:  # reported; the training process compiles it at first launch instead
            failed.append(f"{entry['module']}.{entry['name']}: {type(err).__name__}: {err}"[:300])
    print(json.dumps({"compiled": compiled, "failed": failed}), flush=True)
    return 0


# -- the training process's side ------------------------------------------------------------------
@dataclass
class Precompile:
    """Running workers; :meth:`wait` collects them."""

    manifest: Path
    kernels: int
    processes: list[subprocess.Popen]
    started: float = field(default_factory=time.perf_counter)
    done: bool = False

    def wait(self, timeout: float = WAIT_S) -> str:
        """Wait for every worker (at most ``timeout`` seconds in all); a one-line summary for the log."""
        self.done = True
        compiled, failed = 0, []
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                out, err = process.communicate(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
                failed.append(f"a worker ran past {timeout:.0f} s and was stopped")
                continue
            try:
                result = json.loads(out.strip().splitlines()[-1])
                compiled += result["compiled"]
                failed += result["failed"]
            except (IndexError, json.JSONDecodeError, KeyError, TypeError):
                failed.append(f"a worker exited {process.returncode}: {err.strip()[-300:]}")
        seconds = time.perf_counter() - self.started
        text = (f"precompiled {compiled} of {self.kernels} Triton kernels from {self.manifest} with "
                f"{len(self.processes)} processes, ready {seconds:.1f} s after the start")  # fmt: skip
        if failed:
            text += f"; not precompiled (compiled at first launch instead): {'; '.join(failed)}"
        return text


    def stop(self) -> None:
        """Stop the workers if nobody waited for them (the run failed before its first step)."""
        if self.done:
            return
        self.done = True
        for process in self.processes:
            process.kill()
            process.communicate()


def start(manifest: Path, workers: int | None = None) -> Precompile:
    """Start worker processes compiling ``manifest``'s kernels (already checked by :func:`read_manifest`)."""
    kernels = len(json.loads(Path(manifest).read_text())["kernels"])
    workers = max(1, min(workers or MAX_WORKERS, kernels, (os.cpu_count() or 2) - 1))
    command = [sys.executable, "-m", __name__, str(manifest)]
    processes = [
        subprocess.Popen([*command, str(i), str(workers)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(workers)
    ]
    return Precompile(Path(manifest), kernels, processes)


def start_for_training(setting: str) -> Precompile | None:
    """Workers for ``training.precompile_kernels``: "auto" (the shipped manifest for this GPU and
    Triton, when there is one), "off", or a manifest's path (it must fit this machine: ValueError).
    None without a CUDA device, and in all but each machine's first process of a multi-process
    launch (they share its on-disk cache)."""
    import torch

    if setting == "off" or not torch.cuda.is_available() or int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return None
    env = environment()
    path = shipped_manifest(env) if setting == "auto" else Path(setting)
    if setting == "auto" and not path.is_file():
        logger.info("no shipped kernel manifest for %s: the first step compiles its Triton kernels itself", env)
        return None
    read_manifest(path, env)
    return start(path)


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
