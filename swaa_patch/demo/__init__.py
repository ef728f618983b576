"""The embedded demo model: a small full-attention decoder the project trains on its own tasks.

No model hub is reachable, so ``swaa train-demo`` builds one from scratch: a BPE tokenizer
trained on the synthetic task text (:mod:`.tokenizer`), training batches streamed from the
task generators with seeds disjoint from every evaluation seed (:mod:`.data`), and a Qwen3
model trained with full attention on contexts several times the demo window (:mod:`.train`).
The trained folder ships in ``demo/model/``; ``settings/demo.json`` evaluates SWAA on it.

Light on import (no torch): the CLI imports :class:`TrainDemoArgs` to build its parser.
"""

from .train import TrainDemoArgs, main

__all__ = ["TrainDemoArgs", "main"]
