"""Compile a training run's Triton kernels before its first step, in worker processes forked from it.

Why: on a fresh machine the first `swaa sft` step compiles every Triton kernel it launches (SWAA's
sink kernels, Liger's, trl's fused LM head: 13 kernels, 26 compiles and launcher builds, 7.8-12.8 s
on an H200, benchmarks/results/sft_first_step.md) one after another. Threads do not help: the
compiler's Python front end holds the GIL. Freshly started worker processes did compile in parallel,
but each imported torch, transformers, Liger and trl again beside the training process, which slowed
its model load by 8-10 s and ate the gain (both tried and measured, sft_first_step.md).

So the workers here are *forked* from the training process once its imports are done, just before
the model loads: they start with every module already imported and compile for the GPU target the
training process read, through Triton's own ``compile`` and launcher builder, without touching CUDA
(a forked child must not). What they compile lands in Triton's on-disk cache, where the first step
finds it (0.5 s for all 26 in the kept-cache probe).

What to compile comes from a *manifest*: one entry per kernel variant a run compiled, its module,
name and Triton's own serialized specialization (what ``triton.knobs.runtime.jit_cache_hook`` is
handed at each compile). Every GPU run records its own (``OUTPUT/kernel_manifest.json``); the ones
shipped in ``kernel_manifests/`` (named by GPU architecture and Triton version) are used by default
on a machine that matches. A manifest never changes results: a kernel it lacks, or whose entry no
longer fits the installed code, is compiled at its first launch exactly as without one. What it can
cost is the workers' time, which the training process waits for (at most ``WAIT_S``) before its
first step.
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..jobs.io import atomic_write_json

logger = logging.getLogger(__name__)

MANIFEST_DIR = Path(__file__).with_name("kernel_manifests")
RECORDED_NAME = "kernel_manifest.json"  # in a run's output folder
FORMAT = 1
MAX_WORKERS = 8
WAIT_S = 300.0  # the most a training process waits for its workers (a hung compiler does not stall training)
WARP_SIZE = 32  # every NVIDIA GPU Triton targets


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
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or not isinstance(data.get("kernels"), list)
    ):
        raise ValueError(f"kernel manifest {path}: not a format-{FORMAT} manifest (a 'kernels' list)")
    made = {key: data.get(key) for key in env}
    if made != env:
        raise ValueError(f"kernel manifest {path}: made for {made}, this machine has {env}")
    for i, entry in enumerate(data["kernels"]):
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) for k in ("module", "name", "specialization")
        ):
            raise ValueError(f"kernel manifest {path}: kernels[{i}] needs string 'module', 'name' and "
                             f"'specialization'")  # fmt: skip
    return data["kernels"]


# -- compiling one entry (in a worker) ------------------------------------------------------------
def jit_function(module: str, name: str):
    """The JITFunction ``module.name`` (through autotune / heuristics wrappers, which keep it as ``fn``)."""
    from triton.runtime.jit import JITFunction

    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    while not isinstance(obj, JITFunction):
        obj = obj.fn
    return obj


def compile_entry(entry: dict[str, str], arch: int) -> None:
    """Compile one manifest entry for ``sm{arch}`` into Triton's cache and build its launcher, both as
    the training process's first launch would (the same cache keys), so that launch reads them from
    disk. This is ``JITFunction.preload`` (Triton 3.6) with the target given instead of read from the
    current device, and the launcher built without loading the kernel onto it: no CUDA call, which a
    forked process must not make."""
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.driver import CudaLauncher
    from triton.compiler import ASTSource, make_backend
    from triton.compiler import compile as triton_compile
    from triton.runtime.jit import convert_to_tuple_if_list

    fn = jit_function(entry["module"], entry["name"])
    data = json.loads(entry["specialization"])
    if data["name"] != fn._fn_name:
        raise ValueError(f"the specialization is for {data['name']}, not {fn._fn_name}")
    constexprs = {
        tuple(key): tl.dtype(value) if tl.dtype.is_dtype(value)
        else tl.constexpr(value["constexpr"]) if isinstance(value, dict) and "constexpr" in value
        else value
        for key, value in zip(data["constant_keys"], data["constant_vals"])
    }  # fmt: skip
    attrs = {tuple(key): value for key, value in zip(data["attrs_keys"], data["attrs_vals"])}
    signature = {key: convert_to_tuple_if_list(value) for key, value in data["signature"].items()}
    options = {
        key: tuple(value) if isinstance(value, list) else value for key, value in data["options"].items()
    }
    target = GPUTarget("cuda", arch, WARP_SIZE)
    options = make_backend(target).parse_options(options)
    kernel = triton_compile(
        ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__
    )
    CudaLauncher(kernel.src, kernel.metadata)  # compiles the launcher's C module into the cache


def build_driver_utils() -> None:
    """Compile Triton's CUDA driver module (``cuda_utils``, a C extension the training process builds
    at its first kernel launch) into the cache; like the launchers, it loads but makes no CUDA call."""
    from triton.backends.nvidia.driver import CudaUtils

    CudaUtils()


def worker(conn: Connection) -> None:
    """A forked worker: wait for its share of a manifest (None: nothing to do), compile it (and
    Triton's driver module when asked), send back how many compiled and each failure's reason. It
    gives up if no share comes within ``WAIT_S`` (the training process died before deciding)."""
    if not conn.poll(WAIT_S):
        return
    task = conn.recv()
    if task is None:
        return
    entries, arch, driver_utils = task
    compiled, failed = 0, []
    if driver_utils:
        try:
            build_driver_utils()
        except Exception as err:
            failed.append(f"Triton's driver module: {type(err).__name__}: {err}"[:300])
    for entry in entries:
        try:
            compile_entry(entry, arch)
            compiled += 1
        except Exception as err:  # reported; the training process compiles it at first launch instead
            failed.append(f"{entry['module']}.{entry['name']}: {type(err).__name__}: {err}"[:300])
    # time.monotonic: one clock for every process of the machine
    conn.send({"compiled": compiled, "failed": failed, "finished": time.monotonic()})
    conn.close()


# -- the training process's side ------------------------------------------------------------------
@dataclass
class Precompile:
    """Forked workers, each with its pipe: :meth:`assign` hands out a manifest's kernels once this
    process knows its GPU, :meth:`wait` collects the reports, :meth:`stop` ends them unused."""

    workers: list[tuple[Any, Connection]]  # (multiprocessing process, this process's end of its pipe)
    manifest: Path | None = None
    kernels: int = 0
    started: float = 0.0
    done: bool = False
    summary: str | None = None  # what wait() reported

    def assign(self, setting: str) -> None:
        """Hand the workers ``training.precompile_kernels``'s manifest for the current GPU, a share
        each; with none to hand out, end them. This makes the process's first CUDA call."""
        try:
            found = manifest_for(setting)
        except BaseException:
            self.stop()
            raise
        if found is None:
            self.stop()
            return
        self.manifest, entries, arch = found
        self.kernels, self.started = len(entries), time.monotonic()
        count = len(self.workers)
        for i, (_, conn) in enumerate(self.workers):  # the first also builds Triton's driver module
            conn.send((entries[i::count], arch, i == 0) if entries[i::count] else None)

    def wait(self, timeout: float = WAIT_S) -> str | None:
        """Wait for every worker (at most ``timeout`` seconds in all); a one-line summary for the log
        (None when they had nothing to do)."""
        if self.done:
            return None
        self.done = True
        compiled, failed, finished = 0, [], []
        deadline = time.monotonic() + timeout
        for process, conn in self.workers:
            report = None
            if conn.poll(max(deadline - time.monotonic(), 0.0)):
                try:
                    report = conn.recv()
                except EOFError:  # it died before reporting, or had no share
                    pass
            process.join(max(deadline - time.monotonic(), 0.0))
            if process.is_alive():
                process.kill()
                process.join()
                failed.append(f"a worker ran past {timeout:.0f} s and was stopped")
            elif report is not None:
                compiled += report["compiled"]
                failed += report["failed"]
                finished.append(report["finished"])
            elif process.exitcode != 0:
                failed.append(f"a worker exited {process.exitcode} without a report")
            conn.close()
        done_s = max(finished, default=time.monotonic()) - self.started  # the last worker's own finish
        waited_s = time.monotonic() - self.started
        text = (f"precompiled {compiled} of {self.kernels} Triton kernels from {self.manifest} in "
                f"{len(self.workers)} forked processes, done {done_s:.1f} s after they were handed out "
                f"(collected at {waited_s:.1f} s)")  # fmt: skip
        if failed:
            text += f"; not precompiled (compiled at first launch instead): {'; '.join(failed)}"
        self.summary = text
        return text

    def stop(self) -> None:
        """End the workers unused (no manifest, or the run failed before its first step)."""
        if self.done:
            return
        self.done = True
        for process, conn in self.workers:
            process.kill()
            process.join()
            conn.close()


def manifest_for(setting: str) -> tuple[Path, list[dict[str, str]], int] | None:
    """(manifest, its entries, the GPU's architecture) for ``training.precompile_kernels``: "auto" the
    one shipped for this GPU and Triton (None when there is none), else the path given, which must fit
    this machine (ValueError); None without a CUDA device."""
    import torch

    if setting == "off" or not torch.cuda.is_available():
        return None
    env = environment()
    path = shipped_manifest(env) if setting == "auto" else Path(setting)
    if setting == "auto" and not path.is_file():
        logger.info(
            "no shipped kernel manifest for %s: the first step compiles its Triton kernels itself", env
        )
        return None
    entries = read_manifest(path, env)
    return (path, entries, env["arch"]) if entries else None


def fork_workers(setting: str, workers: int | None = None) -> Precompile | None:
    """Idle workers for ``training.precompile_kernels``, forked now: call it once this process has
    imported what training needs and before its first CUDA call (the children never make one;
    forking before it also leaves CUDA's threads and state out of them). None for "off", without
    CUDA in this torch or without Triton, and in all but each machine's first process of a
    multi-process launch (they share its on-disk cache)."""
    import importlib.util

    import torch

    if (setting == "off" or not torch.cuda._is_compiled() or importlib.util.find_spec("triton") is None
            or int(os.environ.get("LOCAL_RANK", "0")) != 0):  # fmt: skip
        return None
    return fork(max(1, min(workers or MAX_WORKERS, (os.cpu_count() or 2) - 1)))


def fork(count: int, target=worker) -> Precompile:
    """``count`` idle workers running ``target`` (:func:`worker`; tests give their own) on a pipe each."""
    context = multiprocessing.get_context("fork")  # the point: the children start with this process's imports
    running = []
    for i in range(count):
        here, there = context.Pipe()
        process = context.Process(target=target, args=(there,), daemon=True, name=f"swaa-precompile-{i}")
        process.start()
        there.close()  # the child has its own copy; this one would hide the child's exit from recv()
        running.append((process, here))
    return Precompile(running)
