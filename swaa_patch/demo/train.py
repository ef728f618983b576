"""``swaa train-demo``: train the demo model, a small full-attention Qwen3, and its tokenizer.

The whole recipe is here and in :class:`TrainDemoArgs` (the defaults are the shipped 8-layer model's):
a BPE tokenizer trained on the task text, then AdamW with linear warmup and a cosine decay on
batches streamed from the synthetic tasks (:mod:`.data`), loss on the reply tokens plus a small
language-modelling term on the prompt, bf16 autocast + TF32 on a GPU and float32 on a CPU.

Robust to being killed: a checkpoint (weights, optimiser, step, tokenizer) is written atomically
every ``save_every`` steps and picked up on the next run; the final folder is written to a
temporary sibling and renamed into place, so ``output_dir`` is either absent or complete.
With ``time_budget_s`` the run times its first steps and shortens ``max_steps`` to fit the
budget (the decision is logged and saved, so ``--max-steps N`` reproduces the run anywhere).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..jobs.io import current_umask
from ..jobs.liger import LIGER_MODES, LigerPatch, apply_liger, use_liger

logger = logging.getLogger(__name__)

DEFAULT_TASKS = ("passkey", "multikey_niah", "kv_lookup", "variable_tracking")
STATE_FILE = "state.pt"
SUMMARY_FILE = "training_summary.json"
CALIBRATION_STEPS = (5, 55)  # time steps 5..55 (after kernel warm-up) to size a time budget
SAVE_DTYPES = ("float32", "bfloat16", "float16")
RESIDUAL_INITS = ("depth",)
BUDGET_MARGIN = 0.85  # share of the remaining budget planned for steps (evals, slower steps: the rest)


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class TrainDemoArgs:
    """Train the demo model (full attention) and its tokenizer on the synthetic tasks; resumes."""

    output_dir: str = field(default="demo/model", metadata=_help("final model folder (written atomically)"))
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS), metadata=_help("task families"))
    min_length: int = field(default=320, metadata=_help("shortest training prompt, tokens"))
    max_length: int = field(default=1024, metadata=_help("longest training prompt, tokens"))
    vocab_size: int = field(default=2048, metadata=_help("BPE vocabulary size"))
    hidden_size: int = field(default=256, metadata=_help("model width"))
    num_layers: int = field(default=8, metadata=_help("decoder layers"))
    num_heads: int = field(default=4, metadata=_help("query heads"))
    num_kv_heads: int = field(default=2, metadata=_help("key/value heads"))
    head_dim: int = field(default=64, metadata=_help("head dimension"))
    intermediate_size: int = field(default=768, metadata=_help("MLP width"))
    rope_theta: float = field(default=10000.0, metadata=_help("RoPE base"))
    batch_size: int = field(default=32, metadata=_help("sequences per step (all of one length)"))
    max_steps: int = field(default=8000, metadata=_help("optimiser steps (the cosine schedule's length)"))
    time_budget_s: float | None = field(
        default=None, metadata=_help("shorten max_steps to fit this many seconds (timed on the first steps)")
    )
    learning_rate: float = field(default=5e-4, metadata=_help("peak learning rate"))
    min_lr_ratio: float = field(default=0.1, metadata=_help("final learning rate / peak"))
    warmup_steps: int = field(default=500, metadata=_help("linear warmup steps"))
    weight_decay: float = field(default=0.1, metadata=_help("AdamW weight decay (matrices only)"))
    grad_clip: float = field(default=1.0, metadata=_help("gradient norm clip"))
    prompt_loss_weight: float = field(
        default=0.1, metadata=_help("weight of the prompt's next-token loss next to the reply's (mean each)")
    )
    seed: int = field(default=0, metadata=_help("init and data seed (training task seeds start at 1,000,000)"))
    residual_init: str | None = field(default=None, metadata=_help(
        "depth: the projections that write into the residual stream (attention o_proj, MLP down_proj) start at "
        "std / sqrt(2 * num_layers), GPT-2's scaled init for deeper stacks; unset: transformers' init",
        choices=RESIDUAL_INITS))
    grow_from: str | None = field(default=None, metadata=_help(
        "start from this finished train-demo folder (same widths, fewer or equal layers) and its tokenizer: "
        "each source layer is followed by copies of it whose o_proj / down_proj start at zero, so step 0 "
        "computes exactly what the source does (depth up-scaling; swaa_patch/demo/grow.py)"))
    eval_every: int = field(default=500, metadata=_help("held-out accuracy every N steps (0: only at the end)"))
    eval_lengths: list[int] = field(default_factory=lambda: [512, 1024], metadata=_help("held-out prompt lengths"))
    eval_depths: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9], metadata=_help("held-out depths"))
    eval_samples: int = field(default=4, metadata=_help("held-out samples per (task, length, depth) cell"))
    eval_batch_size: int = field(default=16, metadata=_help("held-out generation batch size"))
    max_new_tokens: int = field(default=16, metadata=_help("held-out generation length"))
    log_every: int = field(default=50, metadata=_help("log a summary line every N steps"))
    save_every: int = field(default=250, metadata=_help("checkpoint every N steps"))
    device: str = field(default="auto", metadata=_help("auto (cuda if available), cpu, cuda, cuda:N"))
    liger: str = field(default="auto", metadata=_help(
        "Liger's fused RMSNorm / SwiGLU / RoPE kernels: auto (on CUDA), on, off", choices=LIGER_MODES))
    num_workers: int | None = field(
        default=None, metadata=_help("data-loader workers (default: 0 on CPU, up to 12 on GPU)")
    )
    resume: bool = field(default=True, metadata=_help("continue from the checkpoint / skip a finished output"))
    keep_checkpoint: bool = field(default=False, metadata=_help("keep OUTPUT.ckpt/ after a finished run"))
    save_dtype: str = field(default="bfloat16", metadata=_help(
        "dtype of the saved weights (training keeps float32 master weights either way): bfloat16 halves the "
        "file, which keeps the 8-layer model under 20 MB; settings/demo.json evaluates in float32", choices=SAVE_DTYPES))


# Fields that change what is trained; a checkpoint made with other values is refused.
RECIPE_FIELDS = (
    "tasks", "min_length", "max_length", "vocab_size", "hidden_size", "num_layers", "num_heads",
    "num_kv_heads", "head_dim", "intermediate_size", "rope_theta", "batch_size", "learning_rate",
    "min_lr_ratio", "warmup_steps", "weight_decay", "grad_clip", "prompt_loss_weight", "seed", "residual_init",
    "grow_from",
)


@dataclass
class TrainState:
    """Progress saved in a checkpoint (with the weights and the optimiser)."""

    step: int = 0
    max_steps: int = 0
    train_seconds: float = 0.0  # wall seconds of the training loop, evaluations included
    budget_decided: bool = False
    stopped_by_budget: bool = False
    evals: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_dir(output_dir: Path) -> Path:
    return output_dir.with_name(output_dir.name + ".ckpt")


def lr_factor(step: int, max_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``max_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def build_model(args: TrainDemoArgs, tokenizer: Any) -> Any:
    """A seeded, randomly initialised Qwen3 (full attention, RoPE, tied embeddings)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        head_dim=args.head_dim,
        max_position_embeddings=4 * args.max_length,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta},
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    if args.residual_init == "depth":
        scale_residual_writes(model, args.num_layers)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def scale_residual_writes(model: Any, num_layers: int) -> None:
    """Scale the initial weights of every projection that adds to the residual stream by
    1 / sqrt(2 * num_layers) (two writes per layer): the stream's variance at the top then does not
    grow with depth (GPT-2). Tried for the 8-layer demo model: retrieval formed at the same step as
    without it and multikey_niah later, so it is off by default (benchmarks/results/demo_deep_model_attempts.md)."""
    import torch

    factor = (2 * num_layers) ** -0.5
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(factor)
            layer.mlp.down_proj.weight.mul_(factor)


def build_optimizer(model: Any, args: TrainDemoArgs, device: str) -> Any:
    import torch

    matrices = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]  # norms: no weight decay
    groups = [{"params": matrices, "weight_decay": args.weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.95), fused=device.startswith("cuda"))


def batch_loss(model: Any, batch: dict[str, Any], prompt_weight: float) -> tuple[Any, float, float]:
    """Mean reply-token loss + ``prompt_weight`` x mean prompt-token loss; returns (loss, reply, prompt)."""
    import torch.nn.functional as F

    targets, reply = batch["targets"], batch["answer_mask"]
    logits = model(input_ids=batch["input_ids"]).logits.float()
    per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none")
    per_token = per_token.view_as(targets)
    prompt = (targets != -100) & ~reply
    reply_loss, prompt_loss = per_token[reply].mean(), per_token[prompt].mean()
    loss = reply_loss + prompt_weight * prompt_loss if prompt_weight else reply_loss
    return loss, float(reply_loss.detach()), float(prompt_loss.detach())


# -- checkpoints and the final folder --------------------------------------------------------
def recipe(args: TrainDemoArgs) -> dict[str, Any]:
    return {name: getattr(args, name) for name in RECIPE_FIELDS}


def save_checkpoint(folder: Path, model: Any, optimizer: Any, state: TrainState, args: TrainDemoArgs) -> None:
    import torch

    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "state": dataclasses.asdict(state), "recipe": recipe(args)}
    fd, tmp = tempfile.mkstemp(prefix=f".{STATE_FILE}.", dir=folder)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, folder / STATE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(folder: Path, model: Any, optimizer: Any, args: TrainDemoArgs) -> TrainState:
    import torch

    payload = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    changed = {k: (v, payload["recipe"].get(k)) for k, v in recipe(args).items() if payload["recipe"].get(k) != v}
    if changed:
        raise ValueError(f"checkpoint {folder} was made with another recipe {changed} (now, then); "
                         "use --no-resume or another output_dir")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    return TrainState(**payload["state"])


def write_tokenizer_once(folder: Path, tokenizer: Any) -> None:
    """The checkpoint's tokenizer, written before any weights (staged, then renamed)."""
    if (folder / "tokenizer.json").is_file():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    tokenizer.save_pretrained(staging)
    replace_dir(staging, folder)


def replace_dir(staging: Path, target: Path) -> None:
    """Move a complete ``staging`` folder to ``target``, replacing an old one."""
    mask = current_umask()  # mkdtemp / mkstemp make private (0700 / 0600) entries; publish them normally
    staging.chmod(0o777 & ~mask)
    for path in staging.iterdir():
        path.chmod(0o666 & ~mask)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_model(target: Path, model: Any, tokenizer: Any, summary: dict[str, Any], dtype: str = "float32") -> None:
    """Write the final folder atomically; the weights are cast to ``dtype`` in place (the model's last use)."""
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.to(getattr(torch, dtype)).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def finished_summary(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / SUMMARY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# -- the run ---------------------------------------------------------------------------------
@dataclass
class Run:
    """Everything a training run holds; :meth:`loop` does the steps."""

    args: TrainDemoArgs
    device: str
    tokenizer: Any
    model: Any
    optimizer: Any
    state: TrainState
    heldout: list[dict[str, Any]]
    ckpt: Path
    liger: LigerPatch | None = None

    def evaluate(self) -> dict[str, Any]:
        from .heldout import heldout_metrics

        start = time.perf_counter()
        metrics = heldout_metrics(self.model, self.tokenizer, self.heldout, self.args.eval_batch_size,
                                  self.args.max_new_tokens)
        metrics = {"step": self.state.step, **metrics, "seconds": round(time.perf_counter() - start, 1)}
        self.state.evals.append({k: v for k, v in metrics.items() if k != "examples"})
        logger.info("step %d held-out: accuracy %s mean %.3f | value-token accuracy %s | %d samples, %.0f s",
                    self.state.step, _rounded(metrics["accuracy"]), metrics["mean_accuracy"],
                    _rounded(metrics["value_token_accuracy"]), metrics["samples"], metrics["seconds"])
        return metrics

    def loader(self) -> Any:
        import torch

        from .data import StreamSpec, TrainBatches

        a = self.args
        spec = StreamSpec(tuple(a.tasks), a.min_length, a.max_length, a.batch_size, a.seed)
        workers = a.num_workers
        if workers is None:
            workers = 0 if self.device == "cpu" else max(0, min(12, (os.cpu_count() or 1) - 2))
        return torch.utils.data.DataLoader(
            TrainBatches(self.tokenizer, spec, a.max_steps), batch_size=None,
            sampler=range(self.state.step, a.max_steps), num_workers=workers,
            pin_memory=self.device.startswith("cuda"), prefetch_factor=4 if workers else None,
        )

    def calibrate(self, step_seconds: float) -> None:
        """Fit ``max_steps`` to the time budget from the measured seconds per step (once)."""
        remaining = self.args.time_budget_s - self.state.train_seconds
        fit = self.state.step + int(BUDGET_MARGIN * remaining / step_seconds)
        self.state.max_steps = max(self.state.step + 1, min(self.state.max_steps, fit))
        self.state.budget_decided = True
        logger.info("time budget %.0f s at %.3f s/step: max_steps = %d (reproduce with --max-steps %d)",
                    self.args.time_budget_s, step_seconds, self.state.max_steps, self.state.max_steps)
        if self.state.max_steps < 2 * self.args.warmup_steps:
            logger.warning("only %d steps fit the budget, with %d warmup steps: raise the budget or lower "
                           "--warmup-steps", self.state.max_steps, self.args.warmup_steps)

    def train_step(self, batch: dict[str, Any]) -> tuple[float, float, float]:
        """One optimiser step; returns (reply loss, prompt loss, learning rate)."""
        import torch

        a = self.args
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        lr = a.learning_rate * lr_factor(self.state.step, self.state.max_steps, a.warmup_steps, a.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.startswith("cuda")):
            loss, reply_loss, prompt_loss = batch_loss(self.model, batch, a.prompt_loss_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return reply_loss, prompt_loss, lr

    def evaluate_or_save(self) -> None:
        """Periodic held-out evaluation and checkpoint (the final step gets the final ones)."""
        step, a = self.state.step, self.args
        if step >= self.state.max_steps:
            return
        if a.eval_every and step % a.eval_every == 0:
            self.evaluate()
        if step % a.save_every == 0:
            save_checkpoint(self.ckpt, self.model, self.optimizer, self.state, a)

    def out_of_time(self) -> bool:
        state, budget = self.state, self.args.time_budget_s
        if not budget or state.train_seconds <= budget or state.step >= state.max_steps:
            return False
        logger.warning("time budget of %.0f s spent at step %d of %d: stopping before the schedule ends",
                       budget, state.step, state.max_steps)
        state.stopped_by_budget = True
        return True

    def loop(self, on_step: Callable[[TrainState], None] | None) -> None:
        from tqdm.auto import tqdm

        a, state = self.args, self.state
        first, timed_from = state.step, 0.0
        bar = tqdm(total=state.max_steps, initial=state.step, desc="train-demo", unit="step")
        losses: list[tuple[float, float]] = []
        tick = time.perf_counter()
        self.model.train()
        for batch in self.loader():
            if state.step >= state.max_steps:
                break
            reply_loss, prompt_loss, lr = self.train_step(batch)
            now = time.perf_counter()
            state.train_seconds += now - tick  # wall time: evaluations and checkpoints included
            tick = now
            bar.update(1)
            losses.append((reply_loss, prompt_loss))
            if state.step - first == CALIBRATION_STEPS[0]:
                timed_from = now
            if state.step - first == CALIBRATION_STEPS[1] and a.time_budget_s and not state.budget_decided:
                self.calibrate((now - timed_from) / (CALIBRATION_STEPS[1] - CALIBRATION_STEPS[0]))
                bar.total = state.max_steps
                bar.refresh()
            if state.step % a.log_every == 0 or state.step == state.max_steps:
                self.log(losses, lr)
                losses = []
            self.evaluate_or_save()
            if on_step is not None:
                on_step(state)
            if self.out_of_time():
                break
        bar.close()

    def log(self, losses: list[tuple[float, float]], lr: float) -> None:
        if losses:
            reply, prompt = (sum(x) / len(losses) for x in zip(*losses))
            logger.info("step %d/%d | reply loss %.4f | prompt loss %.4f | lr %.2e | %.0f s",
                        self.state.step, self.state.max_steps, reply, prompt, lr, self.state.train_seconds)


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in values.items()}


def start_run(args: TrainDemoArgs) -> Run:
    """A fresh run, or the checkpointed one when ``resume`` and a checkpoint exist."""
    import torch
    from transformers import AutoTokenizer

    from .data import check_min_length, heldout_records
    from .grow import check_source, grow_into
    from .tokenizer import build_demo_tokenizer

    if args.save_dtype not in SAVE_DTYPES:  # checked before training, not when saving its result
        raise ValueError(f"save_dtype: must be one of {SAVE_DTYPES}, got {args.save_dtype!r}")
    if args.residual_init not in (None, *RESIDUAL_INITS):
        raise ValueError(f"residual_init: must be unset or one of {RESIDUAL_INITS}, got {args.residual_init!r}")
    if args.grow_from is not None:
        if args.residual_init is not None:
            raise ValueError("residual_init: must be unset with grow_from (every layer's weights come from the source)")
        check_source(Path(args.grow_from), args)
    device = resolve_device(args.device)
    ckpt = checkpoint_dir(Path(args.output_dir))
    resuming = args.resume and (ckpt / STATE_FILE).is_file()
    if not resuming:
        shutil.rmtree(ckpt, ignore_errors=True)
        source_tokenizer = AutoTokenizer.from_pretrained(args.grow_from) if args.grow_from else None
        write_tokenizer_once(ckpt, source_tokenizer or build_demo_tokenizer(args.vocab_size, args.tasks))
    # Always the saved copy: the haystack (stdlib docstrings) differs between Python versions,
    # so a checkpoint moved to another machine keeps the tokenizer it was trained with.
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    tokenizer.padding_side = "left"  # for held-out generation; training pads by itself
    check_min_length(tokenizer, args.tasks, args.min_length)
    model = build_model(args, tokenizer)
    if args.grow_from is not None and not resuming:
        mapping = grow_into(model, Path(args.grow_from))
        logger.info("grown from %s: layer j copies source layer %s (zero residual writes where repeated)",
                    args.grow_from, [src if first else f"{src}'" for src, first in mapping])
    model = model.to(device)
    on_cuda = device.startswith("cuda")
    liger = apply_liger(model) if use_liger(args.liger, model.config.model_type, on_cuda, "--liger") else None
    optimizer = build_optimizer(model, args, device)
    state = TrainState(max_steps=args.max_steps)
    if resuming:
        state = load_checkpoint(ckpt, model, optimizer, args)
        logger.info("resumed %s at step %d of %d (the checkpoint's schedule length)",
                    ckpt, state.step, state.max_steps)
    if device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in float32
    heldout = heldout_records(tokenizer, args.tasks, args.eval_lengths, args.eval_depths, args.eval_samples)
    return Run(args, device, tokenizer, model, optimizer, state, heldout, ckpt, liger)


def summarize(run: Run, final: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers

    cuda = run.device.startswith("cuda")
    device = torch.cuda.get_device_name(run.device) if cuda else platform.processor() or "cpu"
    return {
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "args": dataclasses.asdict(run.args),
        "steps": run.state.step,
        "max_steps": run.state.max_steps,
        "stopped_by_budget": run.state.stopped_by_budget,
        "train_seconds": round(run.state.train_seconds, 1),
        "device": device,
        "liger": run.liger is not None,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "heldout_seed": final.get("seed"),
        "final_eval": final,
        "evals": run.state.evals,
    }


def train(args: TrainDemoArgs, on_step: Callable[[TrainState], None] | None = None) -> Path:
    """Train (or resume, or skip if already finished) and return the final model folder."""
    from .data import VALIDATION_SEED

    output = Path(args.output_dir)
    done = finished_summary(output) if args.resume else None
    if done is not None:
        logger.info("%s is already trained (%d steps); --no-resume retrains it", output, done["steps"])
        return output
    run = start_run(args)
    try:
        run.loop(on_step)
    finally:
        if run.liger is not None:
            run.liger.restore()  # the trained instance keeps its kernels; other Qwen3 models get transformers' own
    final = {**run.evaluate(), "seed": VALIDATION_SEED}
    write_model(output, run.model, run.tokenizer, summarize(run, final), args.save_dtype)
    if not args.keep_checkpoint:
        shutil.rmtree(run.ckpt, ignore_errors=True)
    logger.info("wrote %s: %d steps in %.0f s, held-out mean accuracy %.3f",
                output, run.state.step, run.state.train_seconds, final["mean_accuracy"])
    return output


def main(args: TrainDemoArgs) -> int:
    train(args)
    return 0
