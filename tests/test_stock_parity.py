"""Stock parity for every family x eager/sdpa: with hack_hf_swaa() alone, and with an SWAAConfig
whose window covers the sequence (keep_first 0), forward logits at every position (padding
included), the loss with HF-style left-padded labels, every gradient and greedy generate (no
padding, left padding) equal stock transformers'."""

from __future__ import annotations

import pytest
import torch
from reference import rel_error
from tiny import FAMILIES, VOCAB, tiny_model

from swaa_patch import SWAAConfig, apply_swaa, hack_hf_swaa, unhack_hf_swaa

STOCK_BACKENDS = [(f, b) for f in FAMILIES for b in ("eager", "sdpa") if (f, b) != ("gemma2", "sdpa")]
TOL = 1e-5
COVERING = SWAAConfig(sliding_window_size=64, keep_first=0)


def _batch(padded: bool, length: int = 14):
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(3, VOCAB, (3, length), generator=g)
    mask = torch.ones_like(ids)
    if padded:  # padding keeps random ids (tokenizers often pad with eos), so pad rows' values are not 0
        for row, pads in enumerate([0, 4, 9]):
            mask[row, :pads] = 0
    return ids, mask


def _labels(ids, mask):
    """HF-style: the padded batch's input_ids with padding set to -100 (so the first real token is
    scored from the last pad position's logits, which is why pad rows must equal stock's)."""
    return ids.masked_fill(mask == 0, -100)


def _models(family, attn, config):
    """(stock, swaa) with equal weights; natively sliding families get a native window wider than
    the sequence on the stock side, since SWAA governs every layer."""
    unhack_hf_swaa()
    stock = tiny_model(family, attn, sliding_window=512, attention_dropout=0.0)
    hack_hf_swaa()
    swaa = tiny_model(family, attn, sliding_window=512, attention_dropout=0.0)
    if config is not None:
        apply_swaa(swaa, config)
    return stock, swaa


def _forward_and_grads(model, ids, mask):
    model.train()
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, labels=_labels(ids, mask))
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.eval()
    return out.logits.detach(), out.loss.detach(), grads


def _assert_same(got, expected, exact: bool):
    if exact:
        assert torch.equal(got, expected)
    else:
        assert rel_error(got, expected) < TOL


@pytest.mark.parametrize("config", [None, COVERING], ids=["hack-only", "covering-window"])
@pytest.mark.parametrize("padded", [False, True], ids=["no-pad", "left-pad"])
@pytest.mark.parametrize("family, attn", STOCK_BACKENDS)
def test_forward_loss_gradients_equal_stock(family, attn, padded, config):
    stock, swaa = _models(family, attn, config)
    ids, mask = _batch(padded)
    exact = config is None
    logits, loss, grads = _forward_and_grads(stock, ids, mask)
    got_logits, got_loss, got_grads = _forward_and_grads(swaa, ids, mask)
    _assert_same(got_logits, logits, exact)  # every position, padding included
    _assert_same(got_loss, loss, exact)
    assert got_grads.keys() == grads.keys()
    for name in grads:
        _assert_same(got_grads[name], grads[name], exact)


@pytest.mark.parametrize("config", [None, COVERING], ids=["hack-only", "covering-window"])
@pytest.mark.parametrize("padded", [False, True], ids=["no-pad", "left-pad"])
@pytest.mark.parametrize("family, attn", STOCK_BACKENDS)
def test_greedy_generate_equals_stock(family, attn, padded, config):
    stock, swaa = _models(family, attn, config)
    ids, mask = _batch(padded)
    kwargs = dict(attention_mask=mask, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0,
                  return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        expected = stock.generate(ids, **kwargs)
        got = swaa.generate(ids, **kwargs)
    assert torch.equal(got.sequences, expected.sequences)
    _assert_same(torch.stack(got.logits, 1), torch.stack(expected.logits, 1), config is None)
