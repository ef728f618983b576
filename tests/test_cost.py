"""Cost structure: block masks built once per forward, chunked masks never n x n."""

import torch
from tiny import tiny_model

from swaa_patch import SWAAConfig, apply_swaa
from swaa_patch.backends import chunked, flex
from swaa_patch.plan import Memo


def test_flex_block_mask_built_once_per_forward_and_window_kind(monkeypatch):
    built = []
    real = flex.create_block_mask

    def counting(*args, **kwargs):
        built.append(args[3:5])
        return real(*args, **kwargs)

    monkeypatch.setattr(flex, "create_block_mask", counting)
    model = apply_swaa(
        tiny_model("qwen3", "flex_attention"),
        SWAAConfig(sliding_window_size=4, keep_first=1, non_sliding_layers=[1]),
    )
    with torch.no_grad():
        model(torch.randint(3, 90, (2, 40)))
    assert len(built) == 2  # one sliding mask shared by layers 0, 2, 3 and one full mask for layer 1
    with torch.no_grad():
        model(torch.randint(3, 90, (2, 40)))
    assert len(built) == 4  # per forward, not cached across inputs


def test_chunked_masks_stay_small(monkeypatch):
    n, window, keep, chunk = 300, 16, 4, 32
    shapes = []
    real = chunked.chunk_mask

    def recording(*args, **kwargs):
        mask = real(*args, **kwargs)
        shapes.append(tuple(mask.shape[-2:]))
        return mask

    monkeypatch.setattr(chunked, "chunk_mask", recording)
    config = SWAAConfig(sliding_window_size=window, keep_first=keep, query_chunk_size=chunk)
    model = apply_swaa(tiny_model("llama", "sdpa"), config)
    mask = torch.ones(1, n, dtype=torch.long)
    with torch.no_grad():
        model(torch.randint(3, 90, (1, n)), attention_mask=mask)
    assert shapes, "the chunked path was not used"
    assert max(q for q, _ in shapes) <= chunk
    assert max(k for _, k in shapes) <= keep + chunk + window - 1


def test_decode_on_a_fully_bounded_cache_skips_the_full_context_layout(monkeypatch):
    """Per-step work must not grow with the context when every layer's cache is bounded."""
    import swaa_patch.patch as patch

    plans = []
    real = patch.build_plan

    def recording(*args, **kwargs):
        plans.append(real(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(patch, "build_plan", recording)
    model = apply_swaa(tiny_model("qwen3", "sdpa"), SWAAConfig(sliding_window_size=4, keep_first=2))
    with torch.no_grad():
        model.generate(torch.randint(3, 90, (1, 30)), max_new_tokens=5, do_sample=False, pad_token_id=0)
    decode = [p for p in plans if p.is_decode]
    assert len(decode) == 4
    assert all((Memo.FULL_LAYOUT,) not in p._memo for p in decode)
    assert (Memo.FULL_LAYOUT,) in plans[0]._memo  # the prefill used it
