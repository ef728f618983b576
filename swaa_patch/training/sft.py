"""LoRA SFT of a SWA-patched model with trl's SFTTrainer, peft and accelerate.

The model is patched with SWAA *before* peft wraps it, so every training forward follows the
rule: prompt tokens use the window (per packed document), answer tokens (labels != -100)
attend fully on ``force_fa_decode`` layers. Labels reach SWAA's per-forward hook through trl's
fused-LM-head forward (``model(**inputs, fused_lm_head=True)`` with ``labels`` in the call), which
tests/test_sft.py checks against the float64 reference. ``training.liger`` adds Liger's fused RMSNorm /
SwiGLU / RoPE kernels to the model before peft wraps it (``jobs/liger.py``; tests/test_liger.py).

    OUTPUT/
      settings.resolved.json   the validated settings
      training.meta.json       the settings and data the results were trained with (checked on resume)
      checkpoint-N/            trainer checkpoints (+ swaa_config.json, then the swaa_checkpoint.json
                               marker); a rerun resumes the newest complete one (checkpoints.py)
      final/                   adapter_config.json, adapter weights, swaa_config.json, tokenizer
      merged/                  with "merge": true, the adapter merged into the base
      train_metrics.json       final metrics (train_loss over every step, resumes included) and the log history
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from ..backends import triton_swa_train
from ..config import SWAAConfig
from ..jobs.errors import Interrupted
from ..jobs.io import atomic_write_json
from ..jobs.liger import LigerPatch, apply_liger, use_liger
from ..jobs.loading import local_model_path, max_positions, text_config
from ..jobs.output import claimed_output_dir
from ..jobs.run import SETTINGS_FILE
from ..jobs.validate import settings_to_dict
from ..patch import apply_swaa
from . import gpu_warmup, kernel_precompile
from .adapter import merge_swaa_adapter, save_swaa_adapter, save_swaa_config
from .checkpoints import (
    FINAL_DIR,
    MERGED_DIR,
    META_FILE,
    METRICS_FILE,
    CheckpointCommit,
    LogAtSaves,
    check_training_settings,
    clear_results,
    complete_checkpoints,
    has_results,
    resume_point,
    train_loss,
    training_meta,
)
from .data import load_training_set
from .flops import ModelShape, ThroughputMeter, batch_flops, detect_peak_tflops, head_dim
from .fused_lora import fused_lora_updates
from .settings import LoraSettings, SFTSettings, TrainSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTResult:
    final_dir: Path
    global_step: int
    resumed_from: str | None
    metrics: dict[str, Any]


# -- pieces -------------------------------------------------------------------------------------
def on_gpu() -> bool:
    return torch.cuda.is_available()


def training_dtype(settings: SFTSettings) -> torch.dtype:
    """Weights' dtype. auto: bfloat16 for LoRA on GPU (the base is frozen), float32 otherwise (full
    fine-tuning keeps float32 master weights; bf16 autocast still runs the matmuls on GPU)."""
    if settings.dtype == "auto":
        return torch.bfloat16 if on_gpu() and settings.lora is not None else torch.float32
    return getattr(torch, settings.dtype)


def liger_wanted(path: str, settings: SFTSettings) -> bool:
    """``training.liger`` resolved for this model and device, from its config alone (an impossible
    ``on`` fails before the weights load)."""
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(path).model_type
    return use_liger(settings.training.liger, model_type, on_gpu(), "training.liger")


def load_training_model(path: str, settings: SFTSettings) -> tuple[Any, LigerPatch | None]:
    """The base model, SWA-patched with the settings' config (``None``: stock full attention), with
    Liger's layer kernels when ``training.liger`` says so (the patch to restore after training)."""
    from transformers import AutoModelForCausalLM

    liger = liger_wanted(path, settings)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=training_dtype(settings), attn_implementation=settings.attn_implementation
    )
    model.config.use_cache = False  # no KV cache in training (and none with gradient checkpointing)
    apply_swaa(model, settings.swaa_config)
    return model, apply_liger(model) if liger else None


def lora_config(lora: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        use_rslora=lora.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def checkpointing_arguments(t: TrainSettings) -> dict[str, Any]:
    """The checkpointing switch and its kwargs under this version's names: transformers renamed
    ``gradient_checkpointing(_kwargs)`` to ``activation_checkpointing(_kwargs)`` (the old names are
    deprecated aliases there, and the only names before). ``every_n_layers`` is transformers' own
    (Trainer hands it to the model's checkpointing_enable, 5.17 and later)."""
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    name = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    out: dict[str, Any] = {name: t.gradient_checkpointing}
    if t.gradient_checkpointing and t.checkpoint_every_n_layers > 1:
        out[f"{name}_kwargs"] = {"every_n_layers": t.checkpoint_every_n_layers}
    return out


def sft_config(settings: SFTSettings) -> SFTConfig:
    """trl/transformers arguments from the settings (the one place they are mapped)."""
    t, d = settings.training, settings.data
    config = SFTConfig(
        **checkpointing_arguments(t),
        output_dir=str(settings.output_dir),
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=t.lr_scheduler_type,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=None,  # CheckpointCommit rotates, only ever after a checkpoint is complete
        seed=t.seed,
        report_to=t.report_to,
        bf16=on_gpu() and settings.dtype in ("auto", "bfloat16"),  # autocast: bf16 on GPU, fp32 on CPU
        fp16=on_gpu() and settings.dtype == "float16",
        use_cpu=not on_gpu(),
        max_length=d.max_length,
        packing=d.packing,
        packing_strategy="bfd",  # keeps documents whole; the collator restarts position_ids per document
        ddp_find_unused_parameters=False,
        logging_first_step=True,
    )
    return with_settings_precision(config, settings.dtype)


def with_settings_precision(config: SFTConfig, dtype: str) -> SFTConfig:
    """``config`` with the settings' precision, whatever ``accelerate launch`` exported.

    ``accelerate launch`` exports its config file's ``mixed_precision`` (ACCELERATE_MIXED_PRECISION:
    ``bf16`` in sft/accelerate_*.yaml), and transformers takes it whenever neither bf16 nor fp16 is
    set: a float32 run (``dtype`` float32, or any run on a CPU) launched with those configs trained in
    bf16 autocast without a word (a 2-process CPU run's losses differed from one process's by 3e-5;
    with the settings' precision they are identical, tests/test_sft_multiprocess.py). The settings
    decide; a launcher value that disagrees is logged and replaced."""
    wanted = "bf16" if config.bf16 else "fp16" if config.fp16 else "no"
    if config.mixed_precision != wanted:
        logger.warning(
            "ACCELERATE_MIXED_PRECISION=%s (from `accelerate launch`'s config) disagrees with the settings "
            "(dtype %r on %s: mixed precision %s); training follows the settings",
            config.mixed_precision, dtype, "a GPU" if on_gpu() else "the CPU", wanted,
        )  # fmt: skip
        config.mixed_precision = wanted
    return config


def lora_inputs_uncast(model: Any, mixed_precision: bool) -> AbstractContextManager[None]:
    """peft casts each LoRA layer's input to the adapter's dtype (float32 adapters on a bf16 base): a
    float32 copy of the whole activation per adapted projection, which autocast turns straight back into
    bf16 for the adapter's matmul. Under mixed precision the round trip changes no number (bf16 -> float32
    -> bf16 is exact) and costs time: with its backward, ~15 % of a 32K LoRA step's GPU time on an H200
    (benchmarks/results/sft_profile.md). peft's own switch turns it off for the training run only (without
    autocast, e.g. generating with the trained model, the cast is needed)."""
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model, active=mixed_precision)


# -- trainer ------------------------------------------------------------------------------------
class SWAASFTTrainer(SFTTrainer):
    """SFTTrainer whose FLOP count knows the window (``total_flos``, throughput and MFU logs).

    ``liger``: the Liger patch applied to the model, if any (:meth:`restore_kernels` undoes its
    process-wide part once training is over). ``precompile``: forked workers compiling the Triton
    kernels ahead (``kernel_precompile``), and ``warmup``: the thread starting the GPU libraries
    (``gpu_warmup``), both waited for before the first step. ``kernel_manifest``:
    where, on a GPU, the Triton kernels this process compiled are recorded (a manifest for the next
    run's ``training.precompile_kernels``)."""

    def __init__(self, *args: Any, swaa: SWAAConfig | None, peak_tflops: float | None,
                 liger: LigerPatch | None = None, precompile: kernel_precompile.Precompile | None = None,
                 warmup: gpu_warmup.LibraryWarmup | None = None, kernel_manifest: Path | None = None,
                 **kwargs: Any):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.swaa = swaa
        self.liger = liger
        self.precompile, self.warmup, self.kernel_manifest = precompile, warmup, kernel_manifest
        self.peak_tflops = peak_tflops if peak_tflops is not None else detect_peak_tflops()
        self.meter = ThroughputMeter()
        self._shape: ModelShape | None = None
        self._first_logged = False

    def train(self, *args: Any, **kwargs: Any) -> Any:
        if self.precompile is not None:
            summary, self.precompile = self.precompile.wait(), None
            if summary:
                logger.info("%s", summary)
        if self.warmup is not None:
            logger.info("%s", self.warmup.join())
            self.warmup = None
        if self.args.world_size > 1:  # the other processes find the local main process's kernels on disk
            self.accelerator.wait_for_everyone()
        self.meter = ThroughputMeter()  # the first log's rates cover the first step, not the set-up before it
        with lora_inputs_uncast(self.model, mixed_precision=self.args.bf16 or self.args.fp16), \
                fused_lora_updates(self.model), self.recording_kernels():  # fmt: skip
            return super().train(*args, **kwargs)

    @contextmanager
    def recording_kernels(self) -> Iterator[None]:
        """Record the Triton kernels this process compiles into ``kernel_manifest`` (kept on failure too:
        the kernels compiled so far are as useful to the next run)."""
        if self.kernel_manifest is None:
            yield
            return
        with kernel_precompile.Recorder() as recorder:
            try:
                yield
            finally:
                if recorder.entries and self.accelerator.is_main_process:
                    recorder.save(self.kernel_manifest, kernel_precompile.environment())

    def restore_kernels(self) -> None:
        if self.liger is not None:
            self.liger.restore()

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        if self._shape is None:
            self._shape = ModelShape.from_model(self.model)
        flops, tokens = batch_flops(self._shape, self.swaa, inputs)
        self.meter.add(flops, tokens)
        return int(flops)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and "train_runtime" not in logs:  # a periodic training log: every rank is here
            totals = torch.tensor([self.meter.flops, float(self.meter.tokens)], device=self.args.device)
            totals = self.accelerator.reduce(totals, reduction="sum")
            logs.update(self.meter.report(float(totals[0]), int(totals[1]), self.accelerator.num_processes,
                                          self.peak_tflops))
            if not self._first_logged:  # how long the user waited for the first step: start-up included
                logs["since_process_start_s"] = seconds_since_process_start()
                self._first_logged = True
            if torch.cuda.is_available():  # the largest per-GPU peak of any process so far
                peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device=self.args.device)
                logs["peak_gib"] = float(self.accelerator.gather(peak).max())
        super().log(logs, start_time)


def seconds_since_process_start() -> float:
    """Wall seconds since this process was created (imports, data, model load and compiles included)."""
    import psutil  # accelerate's dependency

    return time.time() - psutil.Process().create_time()


class LogLineCallback(TrainerCallback):
    """One logging line per trainer log (loss, learning rate, throughput), for log files."""

    KEYS = ("loss", "learning_rate", "grad_norm", "tokens_per_s", "tflops_per_device", "mfu", "peak_gib",
            "since_process_start_s")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            parts = [f"{k} {logs[k]:.4g}" for k in self.KEYS if k in logs]
            logger.info("step %d/%d: %s", state.global_step, state.max_steps, ", ".join(parts))


def start_library_warmup(path: str, settings: SFTSettings) -> gpu_warmup.LibraryWarmup | None:
    """cuBLAS and cuDNN's attention started in a thread while the model loads (``gpu_warmup``), on a
    GPU unless ``training.precompile_kernels`` is off."""
    if settings.training.precompile_kernels == "off" or not on_gpu():
        return None
    size = head_dim(text_config(path))
    device = torch.device("cuda", torch.cuda.current_device())
    return gpu_warmup.start(size, training_dtype(settings), device, settings.swaa_config is not None)


def build_trainer(settings: SFTSettings, callbacks: tuple[TrainerCallback, ...] = (),
                  precompile: kernel_precompile.Precompile | None = None) -> SWAASFTTrainer:  # fmt: skip
    """Model, data and trainer, ready for ``train()`` (used by :func:`run_sft` and the tests).

    ``precompile``: idle kernel-compiling workers forked before this process's first CUDA call
    (:func:`run_sft` forks them); they get ``training.precompile_kernels``'s manifest here and compile
    while the data and the model load, as the GPU libraries start in a thread
    (:func:`start_library_warmup`)."""
    from transformers import AutoTokenizer

    if precompile is not None:
        precompile.assign(settings.training.precompile_kernels)
    try:
        path = local_model_path(settings.model, settings.output_dir)
        warmup = start_library_warmup(path, settings)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        dataset = load_training_set(tokenizer, settings.datasets, settings.data, max_positions(path))
        model, liger = load_training_model(path, settings)
    except BaseException:
        if precompile is not None:
            precompile.stop()
        raise
    return SWAASFTTrainer(
        model=model,
        args=sft_config(settings),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(settings.lora) if settings.lora is not None else None,
        callbacks=[CheckpointCommit(settings.swaa_config, settings.training.save_total_limit), LogAtSaves(),
                   LogLineCallback(), *callbacks],
        swaa=settings.swaa_config,
        peak_tflops=settings.peak_tflops,
        liger=liger,
        precompile=precompile,
        warmup=warmup,
        kernel_manifest=Path(settings.output_dir) / kernel_precompile.RECORDED_NAME if on_gpu() else None,
    )


def save_final(trainer: SWAASFTTrainer, settings: SFTSettings) -> Path:
    """The adapter (or full model) with its SWAAConfig and tokenizer in OUTPUT/final."""
    final = Path(settings.output_dir) / FINAL_DIR
    if settings.lora is None:
        trainer.save_model(str(final))  # config.json carries swaa_config (apply_swaa set it)
        if trainer.accelerator.is_main_process:
            save_swaa_config(final, settings.swaa_config)
            trainer.processing_class.save_pretrained(final)
        return final
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.accelerator.is_main_process:
        save_swaa_adapter(unwrapped, final, settings.swaa_config, trainer.processing_class)
    return final


def run_sft(settings: SFTSettings, callbacks: tuple[TrainerCallback, ...] = (), force: bool = False) -> SFTResult:
    """Train (resuming the newest complete checkpoint when ``settings.resume``) and save OUTPUT/final.

    ``force``: use an output folder that holds files of another kind of run.
    """
    from accelerate import PartialState

    output = Path(settings.output_dir)
    # forked here: every import is done, and no CUDA call made yet (the children start without CUDA's state)
    precompile = kernel_precompile.fork_workers(settings.training.precompile_kernels)
    try:
        # cpu: without a GPU, a launch of several processes is gloo data parallel only if the shared state
        # is made with it (as TrainingArguments(use_cpu=True) would, but this is the process's first use)
        state = PartialState(cpu=not on_gpu())
        with claimed_output_dir(output, "sft", force, state.process_index, state.wait_for_everyone):
            try:
                return train_in_folder(settings, callbacks, state, precompile)
            except KeyboardInterrupt:
                complete = complete_checkpoints(output)
                done = f"the newest complete checkpoint is {complete[-1].name}" if complete else "no checkpoint yet"
                raise Interrupted(f"interrupted: {done} in {output}; run the same command again to resume",
                                  quiet=not state.is_main_process) from None
    finally:
        if precompile is not None:
            precompile.stop()  # only if the run ended before waiting for them


def prepare_folder(settings: SFTSettings, state: Any) -> None:
    """Refuse results made with other settings (resume), or clear them (no resume); record the new settings."""
    output = Path(settings.output_dir)
    meta = training_meta(settings)
    if has_results(output) and settings.resume:
        check_training_settings(output, meta)
    state.wait_for_everyone()
    if state.is_main_process:
        if has_results(output) and not settings.resume:
            clear_results(output)
        atomic_write_json(output / SETTINGS_FILE, settings_to_dict(settings))
        atomic_write_json(output / META_FILE, meta)
    state.wait_for_everyone()


def warn_if_not_sharded(trainer: SWAASFTTrainer) -> None:
    """accelerate 1.15 turns an FSDP launch config into FSDP only on accelerators: on CPUs the processes
    train as plain (gloo) data parallel. Said once, so a CPU try-out of the FSDP config is not mistaken
    for an FSDP run."""
    import os

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not trainer.is_fsdp_enabled:
        if trainer.accelerator.is_main_process:
            logger.warning("the launch asked for FSDP but accelerate runs it as %s (no FSDP on this device): "
                           "every process holds the whole model", trainer.accelerator.distributed_type.value)


def train_in_folder(settings: SFTSettings, callbacks: tuple[TrainerCallback, ...], state: Any,
                    precompile: kernel_precompile.Precompile | None = None) -> SFTResult:  # fmt: skip
    output = Path(settings.output_dir)
    prepare_folder(settings, state)
    trainer = build_trainer(settings, callbacks, precompile)
    warn_if_not_sharded(trainer)
    resume = resume_point(output) if settings.resume else None
    if resume is not None:
        logger.info("resuming from %s", resume)
    try:
        result = trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    finally:
        trainer.restore_kernels()
    final = save_final(trainer, settings)
    trainer.accelerator.wait_for_everyone()
    history = trainer.state.log_history
    metrics = {**result.metrics, "global_step": trainer.state.global_step, "total_flos": trainer.state.total_flos,
               "liger": trainer.liger is not None, "num_processes": trainer.accelerator.num_processes,
               "distributed_type": trainer.accelerator.distributed_type.value,
               # attention calls of this process by path: SWAA_FUSED_TRAIN's kernel or why a call kept the backend's
               "fused_train_calls": dict(triton_swa_train.PATH_COUNTS)}
    loss = train_loss(history)  # over every step: the trainer's own covers only this invocation's
    if loss is not None:
        metrics["train_loss"] = loss
    if trainer.accelerator.is_main_process:
        atomic_write_json(output / METRICS_FILE, {"metrics": metrics, "log_history": history})
        if settings.merge:
            merge_swaa_adapter(final, output / MERGED_DIR, dtype=training_dtype(settings))
    trainer.accelerator.wait_for_everyone()
    logger.info("saved %s after %d steps (train_loss %s)", final, trainer.state.global_step, metrics["train_loss"])
    return SFTResult(final, trainer.state.global_step, None if resume is None else str(resume), metrics)
