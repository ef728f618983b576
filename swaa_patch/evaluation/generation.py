"""Load a model for evaluation, turn records into token ids, and generate in left-padded batches."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptOptions:
    chat_template: bool
    max_prompt_tokens: int | None
    truncation: str  # "middle" keeps head and tail; "skip" drops over-long prompts


@dataclass(frozen=True)
class Prepared:
    """A record's token ids, ready to batch."""

    id: str
    input_ids: list[int]
    truncated: bool


def load_tokenizer(model_path: str):
    """The model's tokenizer, set up for batched generation (left padding, a pad token)."""
    from transformers import AutoTokenizer

    folder = Path(model_path)
    if not (folder / "tokenizer_config.json").is_file() and (folder / "adapter_config.json").is_file():
        folder = Path(_adapter_base(folder))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _adapter_base(folder: Path) -> str:
    from ..training.adapter import adapter_base_path

    base = adapter_base_path(folder)
    if not Path(base).is_dir():
        raise FileNotFoundError(f"{folder}: LoRA base model {base!r} is not a local folder")
    return base


def resolve_dtype(name: str, device: str):
    import torch

    if name == "auto":
        # CPU kernels for half precision are slow or missing; keep float32 there.
        return torch.float32 if device.startswith("cpu") else "auto"
    return getattr(torch, name)


def load_model(model_path: str, dtype: str, attn_implementation: str, device: str):
    """A model in eval mode on ``device``; LoRA adapter folders are merged into their base."""
    from transformers import AutoModelForCausalLM

    folder = Path(model_path)
    kwargs = {"dtype": resolve_dtype(dtype, device), "attn_implementation": attn_implementation}
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        try:
            from peft import PeftModel
        except ImportError as err:
            raise ImportError(f"{folder} is a LoRA adapter: loading it needs peft "
                              "(pip install 'swaa[eval]' or pip install peft)") from err
        base = AutoModelForCausalLM.from_pretrained(_adapter_base(folder), **kwargs)
        model = PeftModel.from_pretrained(base, folder).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    return model.to(device).eval()


def prompt_ids(tokenizer: Any, prompt: str, chat_template: bool) -> list[int]:
    if not chat_template:
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer of {tokenizer.name_or_path} has no chat template; set \"chat_template\": false"
        )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    # The template already holds the special tokens (BOS included where the model uses one).
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def truncate_middle(ids: list[int], limit: int) -> list[int]:
    """Keep the first and last ``limit // 2`` tokens (LongBench's convention)."""
    if len(ids) <= limit:
        return ids
    head = limit // 2
    return ids[:head] + ids[len(ids) - (limit - head) :]


def prepare(
    tokenizer: Any, records: Sequence[dict[str, Any]], options: PromptOptions, limit: int | None = None
) -> list[Prepared]:
    """Token ids of the first ``limit`` usable records (over-long: middle-truncated or dropped)."""
    out: list[Prepared] = []
    for record in records:
        if limit is not None and len(out) >= limit:
            break
        ids = prompt_ids(tokenizer, record["prompt"], options.chat_template)
        cap = options.max_prompt_tokens
        too_long = cap is not None and len(ids) > cap
        if too_long and options.truncation == "skip":
            continue
        out.append(Prepared(record["id"], truncate_middle(ids, cap) if too_long else ids, too_long))
    return out


def batches(items: Sequence[Prepared], batch_size: int) -> Iterator[list[Prepared]]:
    """Longest prompts first: similar lengths share a batch (less padding) and OOM shows early."""
    ordered = sorted(items, key=lambda p: (-len(p.input_ids), p.id))
    for start in range(0, len(ordered), batch_size):
        yield ordered[start : start + batch_size]


def generate_batch(model: Any, tokenizer: Any, batch: Sequence[Prepared], max_new_tokens: int) -> list[dict[str, Any]]:
    """Greedy generation for one left-padded batch; returns response text and token counts."""
    import torch

    padded = tokenizer.pad({"input_ids": [p.input_ids for p in batch]}, padding=True, return_tensors="pt")
    input_ids = padded["input_ids"].to(model.device)
    attention_mask = padded["attention_mask"].to(model.device)
    with torch.inference_mode():
        output = model.generate(
            input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    new_tokens = output[:, input_ids.shape[1] :]
    results = []
    for row in new_tokens.tolist():
        kept = [t for t in row if t != tokenizer.pad_token_id]
        results.append(
            {
                "response": tokenizer.decode(kept, skip_special_tokens=True),
                "response_tokens": len(kept),
            }
        )
    return results
