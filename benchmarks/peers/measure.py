"""What every row of the peer comparison measures, identically: accuracy, prefill time, KV bytes.

Imports only torch and transformers, never ``swaa_patch``: the kvpress rows run in their own venv
(kvpress 0.5.5 pins transformers < 5.3, SWAA needs >= 5.17) and must not load SWAA's patch. The
samples are the demo's held-out tasks as shipped for lm-eval (eval/lm_eval/swaa_demo/data, the
samples ``swaa eval settings/demo.json`` generates); they are scored by swaa's own scorers, loaded
from their file (a stdlib-only module) without importing the package.

Each sample goes through the chat template as one user turn and ``model.generate`` (greedy, 16 new
tokens, batch 1), as in ``swaa eval``. Prefill time is the first forward of ``generate`` (for a press,
its compression included); KV bytes are those of the cache the last decode step left.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "eval" / "lm_eval" / "swaa_demo" / "data"
TASKS = ("passkey", "multikey_niah", "kv_lookup", "variable_tracking")
MAX_NEW_TOKENS = 16  # settings/demo.json
KiB = 1024
# the KV budgets a comparison can be run at (run_peers.sh BUDGET=...): "same" = SWAA's bounded rows (4 sinks +
# W 64 on every layer); "half" = SWAA's calibrated layer set (4 of 8 layers full, 4 bounded), about half
# of full attention's KV, with the peers keeping as many keys in total (kvpress_rows.half_budget_press)
BUDGETS = ("same", "half")


def row_options(doc: str) -> argparse.Namespace:
    """``--out FILE.json`` and ``--limit N`` of a rows script; sets up logging and the 2 CPU threads
    every row runs with."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="samples per task (default: all 48)")
    parser.add_argument("--budget", choices=BUDGETS, default="same",
                        help="same: 4 sinks + 64 recent keys per layer; half: the KV of half the layers full")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(2)
    return parser.parse_args()


def load_samples(limit: int | None) -> list[dict[str, Any]]:
    """The first ``limit`` samples of each task (all 48 when None), tasks in settings/demo.json order."""
    rows = []
    for task in TASKS:
        lines = [json.loads(line) for line in (DATA / f"{task}.jsonl").read_text().splitlines() if line]
        rows.extend(lines[:limit])
    return rows


def load_scorers() -> dict[str, Callable[[str, Any], float]]:
    """swaa's rule-based scorers, loaded from their file (``import swaa_patch`` would load the patch)."""
    path = REPO / "swaa_patch" / "evaluation" / "scoring.py"
    spec = importlib.util.spec_from_file_location("swaa_scoring", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SCORERS


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """As ``swaa eval`` with ``chat_template: true``: one user turn, generation prompt, no extra BOS."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class PrefillTimer:
    """Wall time of a model's first forward after :meth:`arm` (generate's prefill)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seconds: float | None = None
        self._start: float | None = None
        # prepend: start before any other pre-hook (SWAA plans the forward in one) so its cost counts
        self._handles = [
            model.register_forward_pre_hook(self._begin, prepend=True),
            model.register_forward_hook(self._end),
        ]

    def arm(self) -> None:
        self.seconds, self._start = None, None

    def _begin(self, *_: Any) -> None:
        if self.seconds is None and self._start is None:
            self._start = time.perf_counter()

    def _end(self, *_: Any) -> None:
        if self.seconds is None and self._start is not None:
            self.seconds = time.perf_counter() - self._start

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def output_cache(outputs: Any) -> Any:
    """The cache generate returned (``cache`` from transformers 5.24, ``past_key_values`` before)."""
    for name in ("cache", "past_key_values"):
        value = getattr(outputs, name, None)
        if value is not None:
            return value
    raise RuntimeError(f"{type(outputs).__name__} carries no cache")


def kv_bytes_per_layer(cache: Any) -> list[int]:
    """Bytes of keys + values each cache layer holds now."""
    sizes = []
    for layer in cache.layers:
        sizes.append(sum(t.numel() * t.element_size() for t in (layer.keys, layer.values) if t is not None))
    return sizes


def run_row(
    model: torch.nn.Module,
    tokenizer: Any,
    samples: list[dict[str, Any]],
    scope: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> list[dict[str, Any]]:
    """Greedy answers of every sample, each generated inside a fresh ``scope()`` (e.g. a press)."""
    scorers = load_scorers()
    with torch.inference_mode():  # warm-up (allocator, kernels), so the first sample's time is not an outlier
        model(torch.tensor([prompt_ids(tokenizer, samples[0]["prompt"])]))
    timer = PrefillTimer(model)
    results = []
    try:
        for sample in samples:
            ids = torch.tensor([prompt_ids(tokenizer, sample["prompt"])])
            timer.arm()
            with torch.inference_mode(), scope():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=MAX_NEW_TOKENS,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    return_dict_in_generate=True,
                )
            new = [t for t in out.sequences[0, ids.shape[1] :].tolist() if t != tokenizer.pad_token_id]
            response = tokenizer.decode(new, skip_special_tokens=True)
            results.append({
                "id": sample["id"], "task": sample["task"], "prompt_tokens": ids.shape[1], "response": response,
                "score": scorers[sample["scoring"]](response, sample["answer"]),
                "prefill_s": timer.seconds, "kv_bytes": kv_bytes_per_layer(output_cache(out)),
            })
    finally:
        timer.close()
    return results


def summarise(name: str, kind: str, results: list[dict[str, Any]], note: str = "") -> dict[str, Any]:
    """One table row: accuracy per task and mean, median prefill time (robust to a shared CPU's
    hiccups), mean KV KiB per layer and their total."""
    per_task = {t: _mean([r["score"] for r in results if r["task"] == t]) for t in TASKS}
    layers = len(results[0]["kv_bytes"])
    per_layer = [_mean([r["kv_bytes"][i] for r in results]) / KiB for i in range(layers)]
    return {
        "row": name, "kind": kind, "note": note, "samples": len(results), "accuracy": per_task,
        "mean": _mean(list(per_task.values())), "prefill_ms": 1000 * statistics.median(r["prefill_s"] for r in results),
        "kv_kib_per_layer": per_layer, "kv_kib_total": sum(per_layer), "environment": environment(),
        "responses": results,
    }


def failed_row(name: str, kind: str, error: BaseException) -> dict[str, Any]:
    """A row that could not run, with the error that stopped it (the table says why)."""
    message = f"{type(error).__name__}: {error}".replace(f"{REPO}/", "")  # no machine paths in the table
    return {"row": name, "kind": kind, "error": message, "environment": environment()}


def environment() -> dict[str, str]:
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__,
                "cpu": f"{platform.machine()}, {torch.get_num_threads()} threads"}
    with contextlib.suppress(PackageNotFoundError):
        versions["kvpress"] = version("kvpress")
    return versions


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def write_rows(path: Path, rows: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(list(rows), indent=1))
    tmp.replace(path)
