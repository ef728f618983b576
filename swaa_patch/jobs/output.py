"""One job per output folder, and only a folder that holds nothing but this kind of run.

:func:`claimed_output_dir` holds a folder while a job runs; before the job writes anything:

* a system folder (``/etc``, ``/usr``, ``/``, the home folder itself...) is always refused;
* a folder holding another kind of run (an SFT folder given to ``swaa eval``), or files no swaa
  run of this kind writes (another tool's ``metrics.jsonl`` without ``run_name``), is refused
  unless ``force``; ``swaa_run.json`` records the kind of a folder once a job has claimed it;
* each process locks ``.swaa-rankK.lock``, which names its PID and host: the processes of one
  ``accelerate launch`` each hold their own rank's lock, a second job on the folder is refused.
  The lock file of a killed job (its process is gone) is taken over with a log line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import RunRefused
from .io import atomic_write_json, read_jsonl

logger = logging.getLogger(__name__)

RUN_FILE = "swaa_run.json"
LOCK_PATTERN = ".swaa-rank{rank}.lock"
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin",
                "/sys", "/usr", "/var/lib", "/var/log", "/var/cache", "/snap")
SYSTEM_FOLDERS = ("/", "/home", "/root", "/var", "/opt", "/srv", "/mnt", "/media", "/tmp", "/run")
# Files any kind of job writes (settings record, built-in models, synthetic data cache).
NEUTRAL_ENTRIES = frozenset({RUN_FILE, "settings.resolved.json", "_builtin", "data"})


# What each kind of job writes; the entries of MARKS show that a folder holds such a run.
RUN_ENTRIES = {
    "eval": ("responses", "metrics.jsonl", "report.md", "plots"),
    "distill": ("generations", "generation.meta.json", "dataset.jsonl", "summary.json"),
    "sft": ("final", "train_metrics.json", "merged", "runs"),  # + checkpoint-N/; runs/: tensorboard
    "calibrate": ("calibration.meta.json", "targets", "scores.json", "calibration.json", "swaa_config.json",
                  "report.md", "plots"),
}
MARKS = {"eval": ("responses",), "distill": ("generations", "generation.meta.json"),
         "sft": ("final", "train_metrics.json"), "calibrate": ("scores.json", "calibration.meta.json")}


def owns(kind: str, name: str) -> bool:
    return name in RUN_ENTRIES[kind] or (kind == "sft" and name.startswith("checkpoint-"))


def kinds_in(root: Path) -> list[str]:
    """The kinds of run whose marks ``root`` holds."""
    found = [kind for kind, marks in MARKS.items() if any((root / m).exists() for m in marks)]
    if "sft" not in found and any(p.is_dir() for p in root.glob("checkpoint-*")):
        found.append("sft")
    return found


def swaa_eval_metrics(path: Path) -> bool:
    """``metrics.jsonl`` as ``swaa eval`` writes it: every line has run_name and dataset."""
    return all("run_name" in r and "dataset" in r for r in read_jsonl(path))


def refuse_system_folder(root: Path) -> None:
    """A system folder, or one inside a system tree, is never an output folder (not even with --force)."""
    resolved = root.resolve()
    text = resolved.as_posix()
    reason = None
    if text in SYSTEM_FOLDERS or resolved == Path.home().resolve():
        reason = "is a system or home folder"
    for tree in SYSTEM_TREES:
        if text == tree or text.startswith(tree + "/"):
            reason = f"is inside the system folder {tree}"
    if reason is not None:
        raise RunRefused(f"output_dir {root} {reason}; choose a folder of its own for the run")


def recorded_kind(root: Path) -> str | None:
    path = root / RUN_FILE
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("kind"))
    except (OSError, ValueError, AttributeError):
        return "unknown"


def foreign_entries(root: Path, kind: str) -> list[str]:
    """Entries of ``root`` that no ``kind`` run writes (hidden files and shared ones aside)."""
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    foreign = [n for n in names if n not in NEUTRAL_ENTRIES and not owns(kind, n)]
    metrics = root / "metrics.jsonl"
    if kind == "eval" and metrics.is_file() and not swaa_eval_metrics(metrics):
        foreign.append("metrics.jsonl without run_name")
    return foreign


def check_output_dir(root: Path, kind: str, force: bool) -> None:
    """Refuse a system folder always; a folder of another kind of run or with foreign files unless ``force``."""
    refuse_system_folder(root)
    if not root.is_dir() or force:
        return
    recorded = recorded_kind(root)
    if recorded == kind:
        return  # claimed by this kind of run before; what else is in it is the user's
    other = recorded if recorded is not None else next((k for k in kinds_in(root) if k != kind), None)
    if other is not None:
        raise RunRefused(f"output_dir {root} holds a swaa {other} run; use another folder, or --force")
    foreign = foreign_entries(root, kind)
    if foreign:
        raise RunRefused(f"output_dir {root} holds files that are not from a swaa {kind} run "
                         f"({', '.join(foreign[:5])}); use an empty or new folder, or --force")


def record_kind(root: Path, kind: str) -> None:
    """Write ``swaa_run.json`` once (a forced run into another kind's folder leaves it as it was)."""
    if recorded_kind(root) is None:
        atomic_write_json(root / RUN_FILE, {"kind": kind})


# -- the lock -----------------------------------------------------------------------------------
def _read_holder(fd: int) -> dict | None:
    """The PID / host / start time in a lock file (None when empty: a clean release leaves none)."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", errors="replace")
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return {"pid": "?", "host": "?", "started": "?"}


class OutputLock:
    """An exclusive ``flock`` on a file that names the process holding it (PID, host, start time).

    The operating system drops the lock when its process dies, so the lock file of a killed run is
    free: it is taken over with a warning naming the process that is gone.
    """

    def __init__(self, root: Path, rank: int):
        self.path = root / LOCK_PATTERN.format(rank=rank)
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = self._lock_current_file()
        previous = _read_holder(fd)
        if previous is not None:
            logger.warning("taking over %s: its process %s on %s is gone (a killed run)", self.path,
                           previous.get("pid"), previous.get("host"))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
        self._fd = fd

    def _lock_current_file(self) -> int:
        """A descriptor of the lock file, locked; refused while another process holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd) or {}
                os.close(fd)
                raise RunRefused(f"{self.path.parent} is in use by process {holder.get('pid')} on "
                                 f"{holder.get('host')} (since {holder.get('started')}); wait for it to finish "
                                 "or stop it") from None
            if self._is_current(fd):
                return fd
            os.close(fd)  # its holder removed it while we opened it: lock the new one

    def _is_current(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: nobody locks a removed file
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def claimed_output_dir(root: Path, kind: str, force: bool, rank: int,
                       wait_for_everyone: Callable[[], None]) -> Iterator[None]:
    """Hold ``root`` for this process while the job runs (see the module docstring)."""
    refuse_system_folder(root)
    root.mkdir(parents=True, exist_ok=True)
    lock = OutputLock(root, rank)
    lock.acquire()
    try:
        check_output_dir(root, kind, force)
        wait_for_everyone()  # every process has looked before the main one writes swaa_run.json
        if rank == 0:
            record_kind(root, kind)
        yield
    finally:
        lock.release()
