"""A small byte-level BPE tokenizer trained on the demo's own task text, deterministically.

Trained on the stdlib haystack plus the needles, questions and answers of the synthetic tasks,
so task words ("pass key", "special magic number") are single tokens and prompts stay short.
Digits are split one by one: a model copies a random number digit by digit instead of having to
know thousands of multi-digit tokens. Special tokens and chat template are those of the built-in
tiny model (Qwen style), so ``chat_template: true`` works as it does on Qwen3.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from ..data.haystack import load_paragraphs
from ..data.tasks import TASKS
from ..jobs.builtin_models import CHAT_TEMPLATE, SPECIAL_TOKENS
from .data import answer_text

TASK_TEXTS_PER_FAMILY = 300


def task_texts(tasks: Sequence[str], per_task: int = TASK_TEXTS_PER_FAMILY) -> Iterator[str]:
    """Needles, question and formatted answer of ``per_task`` draws of each task family."""
    for task in tasks:
        family = TASKS[task]
        for index in range(per_task):
            # Its own seed string: never the rng of an evaluation or a training sample.
            rng = random.Random(f"demo-tokenizer|{task}|{index}")
            draw = family.draw(rng, rng.random())
            yield " ".join(n.text for n in draw.needles)
            yield f"{draw.question}\n{answer_text(draw.answer, family.scoring)}"


def build_demo_tokenizer(vocab_size: int, tasks: Sequence[str]) -> Any:
    """A ``PreTrainedTokenizerFast`` with ``vocab_size`` entries, the same on every run."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [*load_paragraphs(), *task_texts(tasks)]
    core.train_from_iterator(corpus, trainer, length=len(corpus))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
