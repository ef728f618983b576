"""The built-in models: tiny random models with a real tokenizer, built offline on first use.

``build_tiny_model(folder)`` trains a small byte-level BPE tokenizer on the stdlib-docstring
haystack (no download) and saves it next to a seeded, randomly initialised Qwen3 model of a few
hundred thousand parameters. Settings files name it ``builtin:tiny-random-qwen3`` (for smoke
runs, CI and tests); :func:`resolve_builtin_model` builds it once into a cache folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..data.haystack import load_paragraphs

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen-style template, so chat_template=true works on the tiny model exactly as on Qwen3.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny model; defaults follow transformers' own tiny test configs."""

    vocab_size: int = 2048
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    max_position_embeddings: int = 32768
    seed: int = 0
    tokenizer_paragraphs: int = 1500  # enough text for a 2K vocab, trains in about a second


def build_tiny_tokenizer(spec: TinySpec = TinySpec()):
    """A byte-level BPE tokenizer (digits split one by one) trained on stdlib docstrings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(load_paragraphs()[: spec.tokenizer_paragraphs], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(folder: str | os.PathLike, spec: TinySpec = TinySpec()) -> Path:
    """Save a tiny random Qwen3 model and its tokenizer into ``folder``; returns the folder."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    folder = Path(folder)
    tokenizer = build_tiny_tokenizer(spec)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


BUILTIN_MODELS = {"tiny-random-qwen3": TinySpec()}


def is_builtin(name: str) -> bool:
    return name.startswith(BUILTIN_PREFIX)


def builtin_key(name: str) -> str:
    """``NAME`` of ``builtin:NAME`` (or of ``NAME``); ValueError naming the known ones if unknown."""
    key = name[len(BUILTIN_PREFIX) :] if is_builtin(name) else name
    if key not in BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; known: {[BUILTIN_PREFIX + k for k in BUILTIN_MODELS]}")
    return key


def resolve_builtin_model(name: str, cache_dir: str | os.PathLike) -> Path:
    """Path of a built-in model, building it into ``cache_dir`` on first use (atomically)."""
    key = builtin_key(name)
    target = Path(cache_dir) / key
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        build_tiny_model(staging, BUILTIN_MODELS[key])
        os.replace(staging, target)  # a killed build leaves only a hidden staging folder
        logger.info("built %s into %s", name, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise  # not a lost race with a concurrent build of the same model
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
