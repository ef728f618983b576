"""Start the GPU libraries a training step needs (cuBLAS, cuDNN's attention) while the model loads.

Why: on a fresh process the first step pays each library's start-up: cuDNN's first two attention
graphs took 1.6-3.3 s at 128K and 256K on an H200 against 0.05-0.1 s for the same graphs at a new
length once started, and the rest of the first step beyond the step itself (cuBLAS, the first
kernels' loads) 2-4 s (benchmarks/results/sft_first_step.md). That start-up does not depend on the
sequence length, so a background thread can pay it on tiny inputs of the model's head size and
dtype while the main thread loads the weights; the training process joins the thread before its
first step, so the two never run the libraries at once. It computes nothing the training uses: a
failure here is logged and the step pays the start-up itself, as without it.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

WARM_LENGTH = 256  # tokens of the tiny attention call (two cuDNN tiles)
WARM_WINDOW = 128


def warm_libraries(head_dim: int, dtype: torch.dtype, device: torch.device, attention: bool) -> list[str]:
    """A tiny matmul (cuBLAS) and, with ``attention`` (an SWAA model) where its training attention
    takes cuDNN's band, a tiny band forward and backward through the same ops; what was started."""
    from ..backends import cudnn_swa, triton_swa_train

    x = torch.randn(64, 64, device=device, dtype=dtype)
    (x @ x).sum().item()
    started = ["cuBLAS"]
    q = torch.randn(1, 1, WARM_LENGTH, head_dim, device=device, dtype=dtype)
    if attention and triton_swa_train.kernel_for(q, q, WARM_WINDOW, None) == triton_swa_train.CUDNN_TAKEN:
        scale = head_dim**-0.5
        out, lse = cudnn_swa.window_attention(q, q, q, WARM_WINDOW, scale)
        cudnn_swa.window_attention_backward(q, q, q, out, lse, out, WARM_WINDOW, scale)
        torch.cuda.synchronize(device)
        started.append("cuDNN attention")
    return started


@dataclass
class LibraryWarmup:
    """The running thread; :meth:`join` waits for it and says what it did."""

    thread: threading.Thread
    outcome: dict = field(default_factory=dict)
    begun: float = field(default_factory=time.perf_counter)

    def join(self) -> str:
        self.thread.join()
        if "error" in self.outcome:
            return f"GPU libraries not started ahead ({self.outcome['error']}); the first step starts them"
        return (f"{' and '.join(self.outcome['started'])} started in {self.outcome['seconds']:.1f} s while the model "
                f"loaded")  # fmt: skip


def start(head_dim: int, dtype: torch.dtype, device: torch.device, attention: bool) -> LibraryWarmup:
    """Start :func:`warm_libraries` in a daemon thread (on ``device``: a thread's current device is
    its own)."""
    outcome: dict = {}

    def run() -> None:
        begun = time.perf_counter()
        try:
            with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
                outcome["started"] = warm_libraries(head_dim, dtype, device, attention)
        except Exception as err:  # the step pays the start-up instead; results are the same either way
            outcome["error"] = f"{type(err).__name__}: {err}"[:300]
        outcome["seconds"] = time.perf_counter() - begun

    thread = threading.Thread(target=run, name="swaa-gpu-warmup", daemon=True)
    thread.start()
    return LibraryWarmup(thread, outcome)

