"""SWAA under transformers' continuous batching: exact, bounded, loud on what it does not know.

Requests of different lengths, chunked prefills mixed with decode steps, requests arriving while
others decode: every generated token equals ``model.generate`` of the prompt alone and the float64
reference's greedy choice; the packed kernel equals a float64 computation of the rule on random
packed layouts; bounded layers hold keep_first + W slots per request at any length; a layout SWAA
did not plan raises TransformersMismatch."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import RefRule, reference_logits, reference_model, rel_error
from tiny import COMMON, tiny_model
from transformers import ContinuousBatchingConfig, GenerationConfig

from swaa_patch import SWAAConfig, apply_swaa, hack_hf_swaa, swaa_enabled, unhack_hf_swaa
from swaa_patch.backends import AttentionCall, run_attention
from swaa_patch.compat import TransformersMismatch
from swaa_patch.serving import engine
from swaa_patch.serving.paged_cache import give_sink_ring, read_slots, request_cache_bytes, write_slots
from swaa_patch.serving.plan import PackedRequest, build_packed_plan, paged_layout

PAGE = 4
NEW = 8
# layer 0 and 2 bounded (sinks + ring), 1 sliding with force_fa_decode (full cache), 3 full attention
MIXED = SWAAConfig(sliding_window_size=4, keep_first=2, force_fa_decode=[1], non_sliding_layers=[3])
MIXED_RULE = RefRule(4, 2, [1], (3,))
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [12, 13, 14], list(range(20, 37)), [40, 41, 42, 43, 44, 45]]


def cb_config(**overrides) -> ContinuousBatchingConfig:
    """A small paged cache (pages of 4 tokens) and batches of at most 8 tokens: prompts are prefilled
    in chunks, mixed with other requests' decode steps."""
    fields = ContinuousBatchingConfig.__dataclass_fields__
    page = {"page_size": PAGE} if "page_size" in fields else {"block_size": PAGE}  # 5.17: block_size
    return ContinuousBatchingConfig(**{"max_batch_tokens": 8, "num_blocks": 96, **page, **overrides})


def greedy(new: int = NEW) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=-1, pad_token_id=0)


def generate_batch(model, prompts, new: int = NEW, **cb) -> list[list[int]]:
    out = model.generate_batch(prompts, generation_config=greedy(new), continuous_batching_config=cb_config(**cb))
    ordered = sorted(out.values(), key=lambda o: int(o.request_id.split("_")[-1]))
    assert all(o.error is None for o in ordered), [o.error for o in ordered]
    return [list(o.generated_tokens) for o in ordered]


def generate_alone(model, prompt, new: int = NEW) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False, pad_token_id=0)
    return out[0, len(prompt) :].tolist()


@pytest.fixture
def plans(monkeypatch):
    """Every packed plan of the test with the cache bytes its requests held at that forward."""
    seen = []
    original = engine.plan_packed_forward

    def spy(config, arguments, found, cache_arg):
        plan = original(config, arguments, found, cache_arg)
        held = {r.request_id: request_cache_bytes(found[1], r.request_id) for r in plan.requests}
        seen.append(SimpleNamespace(plan=plan, held=held, cache=found[1]))
        return plan

    monkeypatch.setattr(engine, "plan_packed_forward", spy)
    return seen


def _coverage(seen) -> dict[str, bool]:
    """What the forwards of a run exercised."""
    requests = [r for s in seen for r in s.plan.requests]
    return {
        "mixed prompt and generated rows": any(
            s.plan.q_answer is not None and not bool(s.plan.q_answer.all()) for s in seen
        ),
        "chunked prefill": any(0 < r.past < r.prompt_len for r in requests),
        "ring wrapped": any(r.past + r.new > MIXED.keep_first + MIXED.sliding_window_size + 1 for r in requests),
    }


CASES = [
    ("qwen3", "sdpa"),
    ("qwen3", "eager"),  # continuous batching runs it as paged|eager
    ("llama", "sdpa"),
    ("mistral", "sdpa"),  # native sliding_window 6 on every layer: SWAA's layout replaces it
    ("gemma2", "eager"),  # logit softcapping, native window on every other layer
    ("gemma3_text", "sdpa"),
    ("qwen3_moe", "sdpa"),
]


@pytest.mark.parametrize("family, attn", CASES)
def test_generate_batch_equals_generate(family, attn, plans):
    model = apply_swaa(tiny_model(family, attn), MIXED)
    got = generate_batch(model, PROMPTS)
    assert got == [generate_alone(model, p) for p in PROMPTS]
    assert all(_coverage(plans).values()), _coverage(plans)
    with swaa_enabled(model, None):  # the rule changes the answers: equality above is not vacuous
        assert got != [generate_alone(model, p) for p in PROMPTS]


def test_generate_batch_follows_float64_reference():
    model = tiny_model("qwen3", "sdpa")
    ref = reference_model(model)
    apply_swaa(model, MIXED)
    for prompt, tokens in zip(PROMPTS, generate_batch(model, PROMPTS)):
        sequence = torch.tensor([prompt + tokens])
        logits = reference_logits(ref, MIXED_RULE, sequence, decode_from=len(prompt))[0]
        assert logits[len(prompt) - 1 : -1].argmax(-1).tolist() == tokens


def test_one_token_prompt_chunk_is_prefill(plans):
    """A 9-token prompt in batches of 8 tokens ends with a one-token chunk on a filled cache: in the
    packed arguments it looks exactly like a decode step, but it is a prompt token and must slide."""
    config = SWAAConfig(sliding_window_size=2, keep_first=1, force_fa_decode=True)
    rule = RefRule(2, 1, True)
    model = tiny_model("qwen3", "sdpa", seed=3)
    ref = reference_model(model)
    apply_swaa(model, config)
    prompt = [7, 31, 64, 12, 90, 5, 48, 23, 77]
    (tokens,) = generate_batch(model, [prompt], new=3)
    assert tokens == generate_alone(model, prompt, 3)
    assert any(r.past == 8 and r.new == 1 and r.prompt_len == 9 for s in plans for r in s.plan.requests)
    as_prefill = reference_logits(ref, rule, torch.tensor([prompt]), decode_from=9)[0, -1]
    as_decode = reference_logits(ref, rule, torch.tensor([prompt]), decode_from=8)[0, -1]
    assert tokens[0] == int(as_prefill.argmax())
    assert int(as_decode.argmax()) != tokens[0]  # treating the chunk as a decode step would be caught


def test_requests_arriving_while_others_decode(plans):
    model = apply_swaa(tiny_model("qwen3", "sdpa"), MIXED)
    long_new = 20
    with model.continuous_batching_context_manager(
        generation_config=greedy(long_new), continuous_batching_config=cb_config(), warmup=False
    ) as manager:
        manager.add_request(PROMPTS[0], request_id="a", max_new_tokens=long_new, streaming=True)
        stream, results = manager.request_id_iter("a"), {}
        while len(next(stream).generated_tokens) < 2:
            pass
        manager.add_request(PROMPTS[2], request_id="b", max_new_tokens=NEW)  # arrives while a decodes
        while len((last := next(stream)).generated_tokens) < 6:
            pass
        manager.add_request(PROMPTS[3], request_id="c", max_new_tokens=NEW)
        while not last.is_finished():
            last = next(stream)
        results["a"] = last
        for rid in ("b", "c"):
            while rid not in results:
                out = manager.get_result(request_id=rid, timeout=1)
                if out is not None and out.is_finished():
                    results[rid] = out
    assert list(results["a"].generated_tokens) == generate_alone(model, PROMPTS[0], long_new)
    assert list(results["b"].generated_tokens) == generate_alone(model, PROMPTS[2])
    assert list(results["c"].generated_tokens) == generate_alone(model, PROMPTS[3])
    joined = [s for s in plans if {r.request_id for r in s.plan.requests} >= {"a", "b"}]
    assert any(r.request_id == "a" and r.past >= r.prompt_len for s in joined for r in s.plan.requests)


# -- bounded memory ---------------------------------------------------------------------------
def test_bounded_layers_hold_sinks_and_ring_per_request(plans, monkeypatch):
    """Every layer bounded: a request holds ceil((keep_first + W) / page) pages per layer whatever
    its length; with full layers (the same model without SWAA) the pages grow with the context."""
    config = SWAAConfig(sliding_window_size=5, keep_first=3)
    model = apply_swaa(tiny_model("qwen3", "sdpa"), config)
    prompts = [list(range(3, 3 + n)) for n in (10, 30, 60)]
    assert generate_batch(model, prompts, new=4, num_blocks=160) == [generate_alone(model, p, 4) for p in prompts]
    held = {rid: max(s.held[rid] for s in plans if rid in s.held) for rid in ("req_0", "req_1", "req_2")}
    # one page of every layer: (keys + values) x page x kv heads x head dim x float32
    page_bytes = COMMON["num_hidden_layers"] * 2 * PAGE * COMMON["num_key_value_heads"] * COMMON["head_dim"] * 4
    assert held == dict.fromkeys(held, 2 * page_bytes)  # ceil((3 + 5) / 4) = 2 pages, at 14 to 64 tokens
    stock = []
    original = engine.ContinuousBatchingIOs.prepare_batch_tensors

    def watch(io, requests_in_batch, *args, **kwargs):
        result = original(io, requests_in_batch, *args, **kwargs)
        stock.append({f.state.request_id: request_cache_bytes(io.cache, f.state.request_id) for f in requests_in_batch})
        return result

    monkeypatch.setattr(engine.ContinuousBatchingIOs, "prepare_batch_tensors", watch)
    with swaa_enabled(model, None):
        assert generate_batch(model, prompts, new=4, num_blocks=160) == [generate_alone(model, p, 4) for p in prompts]
    grown = [max(s.get(rid, 0) for s in stock) for rid in ("req_0", "req_1", "req_2")]
    assert grown[0] < grown[1] < grown[2]


@settings(max_examples=60, deadline=None)
@given(
    keep=st.integers(0, 4),
    window=st.integers(1, 6),
    chunks=st.lists(st.integers(1, 9), min_size=1, max_size=8),
)
def test_sink_ring_slots_keep_exactly_what_the_rule_needs(keep, window, chunks):
    """Passes of any size: each read returns the sinks and the newest W - 1 positions in position
    order, and no pass writes a slot twice."""
    slots: dict[int, int] = {}
    past = 0
    for new in chunks:
        expected = [p for p in range(past) if p < keep or past - p < window]
        assert [slots[s] for s in read_slots(past, keep, window)] == expected
        written = write_slots(past, new, keep, window)
        kept = [s for s in written if s is not None]
        assert len(kept) == len(set(kept)) and max(kept, default=0) < keep + window
        for position, slot in zip(range(past, past + new), written):
            if slot is not None:
                slots[slot] = position
        past += new


# -- the packed kernel against float64 --------------------------------------------------------
def _reference_rows(config: SWAAConfig, layer: int, requests, q, k_all, v_all, scaling):
    """Dense float64 attention of every new token over its request's whole context, visibility
    written out from background.md: j <= i and (full, or i - j < W, or j < keep_first)."""
    outputs, row = [], 0
    for r, (keys, values) in zip(requests, zip(k_all, v_all)):
        for i in range(r.past, r.past + r.new):
            answer = i >= r.prompt_len
            full = layer in config.non_sliding_layers or (answer and config.full_on_decode(layer))
            seen = [j for j in range(i + 1) if full or i - j < config.sliding_window_size or j < config.keep_first]
            groups = q.shape[1] // keys.shape[0]
            kk = keys[:, seen].repeat_interleave(groups, 0)
            vv = values[:, seen].repeat_interleave(groups, 0)
            scores = torch.einsum("hd,hkd->hk", q[0, :, row], kk) * scaling
            weights = torch.softmax(scores, -1)
            outputs.append(torch.einsum("hk,hkd->hd", weights, vv))
            row += 1
    return torch.stack(outputs)  # (Q, heads, dim)


request_strategy = st.tuples(st.integers(1, 12), st.integers(0, 14), st.integers(1, 6)).map(
    lambda t: PackedRequest(prompt_len=t[0], past=t[1], new=t[2])
)


@settings(max_examples=40, deadline=None)
@given(
    requests=st.lists(request_strategy, min_size=1, max_size=5),
    window=st.integers(1, 6),
    keep=st.integers(0, 3),
    layer=st.integers(0, 3),
    attn=st.sampled_from(["sdpa", "paged|eager", "flash_attention_2"]),
    chunk=st.integers(1, 7),
    seed=st.integers(0, 10_000),
)
def test_packed_kernel_matches_float64_rule(requests, window, keep, layer, attn, chunk, seed):
    config = SWAAConfig(
        sliding_window_size=window, keep_first=keep, force_fa_decode=[1], non_sliding_layers=[3],
        query_chunk_size=chunk,
    )
    layout = paged_layout(config, 4)
    g = torch.Generator().manual_seed(seed)
    heads, kv_heads, dim = 4, 2, 8
    total = sum(r.new for r in requests)
    position_ids = torch.cat([torch.arange(r.past, r.past + r.new) for r in requests])[None]
    cu = torch.tensor([0] + [sum(r.new for r in requests[: i + 1]) for i in range(len(requests))])
    plan = build_packed_plan(config, requests, layout, position_ids, cu)
    q = torch.randn(1, heads, total, dim, generator=g, dtype=torch.float64)
    k_all = [torch.randn(kv_heads, r.past + r.new, dim, generator=g, dtype=torch.float64) for r in requests]
    v_all = [torch.randn(kv_heads, r.past + r.new, dim, generator=g, dtype=torch.float64) for r in requests]
    keys = plan.keys(layer)
    key = torch.cat([k[:, keys.pos[keys.doc == i]] for i, k in enumerate(k_all)], 1)[None]
    value = torch.cat([v[:, keys.pos[keys.doc == i]] for i, v in enumerate(v_all)], 1)[None]
    module = SimpleNamespace(layer_idx=layer, training=False)
    out, _ = run_attention(attn, AttentionCall(module, q, key, value, plan, scaling=dim**-0.5))
    expected = _reference_rows(config, layer, requests, q, k_all, v_all, dim**-0.5)
    tolerance = 1e-10 if attn != "paged|eager" else 1e-6  # eager's softmax runs in float32, as stock
    assert rel_error(out[0], expected) < tolerance


# -- what SWAA does not know fails loudly ------------------------------------------------------
def _plan_args(requests, positions=None):
    cu = torch.tensor([0] + [sum(r.new for r in requests[: i + 1]) for i in range(len(requests))])
    pos = torch.cat([torch.arange(r.past, r.past + r.new) for r in requests])[None] if positions is None else positions
    return pos, cu


def test_packing_that_disagrees_with_the_schedule_raises():
    requests = [PackedRequest(3, 0, 3), PackedRequest(2, 2, 1)]
    layout = paged_layout(MIXED, 4)
    pos, cu = _plan_args(requests)
    with pytest.raises(TransformersMismatch, match="cu_seq_lens_q.*installed transformers"):
        build_packed_plan(MIXED, requests, layout, pos, torch.tensor([0, 2, 4]))
    with pytest.raises(TransformersMismatch, match="position_ids"):
        build_packed_plan(MIXED, requests, layout, torch.tensor([[0, 1, 2, 0]]), cu)


def test_unknown_engine_layouts_raise(monkeypatch):
    fake = SimpleNamespace(_swaa_layout=paged_layout(MIXED, 4), _swaa_batches=[])
    monkeypatch.setattr(engine, "cache_layers", lambda cache: [0, 1, 2, 3])
    pos, cu = _plan_args([PackedRequest(3, 0, 3)])
    arguments = {"position_ids": pos, "cu_seq_lens_q": cu}
    with pytest.raises(TransformersMismatch, match="block-table"):
        engine.plan_packed_forward(MIXED, {**arguments, "block_table": torch.zeros(1)}, ("cache", fake), "cache")
    with pytest.raises(TransformersMismatch, match="did not see prepared"):
        engine.plan_packed_forward(MIXED, arguments, ("cache", fake), "cache")
    with pytest.raises(TransformersMismatch, match="without `cu_seq_lens_q`"):
        engine.plan_packed_forward(MIXED, {"position_ids": pos}, ("cache", fake), "cache")
    with pytest.raises(ValueError, match="built before the model had its SWAAConfig"):
        engine.plan_packed_forward(MIXED, arguments, ("cache", SimpleNamespace()), "cache")
    other = dataclasses.replace(MIXED, keep_first=3)
    with pytest.raises(ValueError, match="changed since"):
        engine.plan_packed_forward(other, arguments, ("cache", fake), "cache")
    with pytest.raises(TransformersMismatch, match="takes .* where SWAA expects"):
        engine._check_signature(lambda self, cfg, other: None, ("config", "continuous_batching_config"))
    allocator = SimpleNamespace(sliding_window=7, block_table={}, sentinel_index=1, write_trash_index=2)
    with pytest.raises(TransformersMismatch, match="SWAA sized it for keep_first \\+ W = 6"):
        give_sink_ring(allocator, paged_layout(MIXED, 4))


def test_an_engine_swaa_does_not_know_is_left_alone(monkeypatch):
    """hack_hf_swaa works on a release whose engine moved (SWAA everywhere else); a continuous-
    batching forward of a SWAA model there raises, naming what moved."""

    class MovedIOs:
        def prepare_batch_tensors(self, batch, *args):
            pass

    unhack_hf_swaa()
    monkeypatch.setattr(engine, "ContinuousBatchingIOs", MovedIOs)
    monkeypatch.setattr(engine, "_UNSUPPORTED", [])
    try:
        hack_hf_swaa()
        assert not engine._ORIGINALS
        with pytest.raises(TransformersMismatch, match="prepare_batch_tensors takes .* where SWAA expects"):
            engine.plan_packed_forward(MIXED, {}, ("cache", SimpleNamespace()), "cache")
    finally:
        unhack_hf_swaa()


def test_a_swaa_cache_refuses_a_model_without_swaa():
    model = apply_swaa(tiny_model("qwen3", "sdpa"), MIXED)
    manager = model.init_continuous_batching(generation_config=greedy(), continuous_batching_config=cb_config())
    cache = manager._create_batch_processor().cache
    assert cache._swaa_layout.bounded_layers == {0, 2}
    model.config.swaa_config = None
    with pytest.raises(ValueError, match="laid out for SWAA"):
        model(input_ids=torch.tensor([[3, 4]]), cache=cache, position_ids=torch.tensor([[0, 1]]))


def test_stock_models_run_stock_continuous_batching():
    model = tiny_model("mistral", "sdpa")  # its native window is the engine's own sliding layout
    assert generate_batch(model, PROMPTS) == [generate_alone(model, p) for p in PROMPTS]


def _one_after_another(model, prompts, new: int = 4) -> list[list[int]]:
    """Requests run one after another on one engine: a later one may reuse an earlier one's pages."""
    results = []
    with model.continuous_batching_context_manager(
        generation_config=greedy(new), continuous_batching_config=cb_config(), warmup=False
    ) as manager:
        for i, prompt in enumerate(prompts):
            manager.add_request(prompt, request_id=f"r{i}", max_new_tokens=new)
            while (out := manager.get_result(request_id=f"r{i}", timeout=1)) is None or not out.is_finished():
                pass
            results.append(list(out.generated_tokens))
    return results


@pytest.mark.parametrize("fad", [False, True])
def test_prefix_pages_are_shared_only_where_exact(plans, monkeypatch, fad):
    """A follow-up prompt = the first prompt + its answer + more (a chat's next turn). Without
    force_fa_decode a token's keys depend only on the tokens before it, so the engine may reuse the
    first request's pages; with it, the answer's keys came from decode steps (full attention) and
    differ from the same tokens' keys as a prompt, so SWAA turns block sharing off."""
    config = SWAAConfig(sliding_window_size=4, keep_first=2, force_fa_decode=fad, bounded_cache=False)
    model = apply_swaa(tiny_model("qwen3", "sdpa"), config)
    first = list(range(10, 29))
    (answer,) = _one_after_another(model, [first])
    prompts = [first, first + answer + [70, 71]]
    got = _one_after_another(model, prompts)
    assert got == [generate_alone(model, p, 4) for p in prompts]
    reused = next(r.past for s in plans for r in s.plan.requests if r.request_id == "r1")
    assert reused == (0 if fad else 20)  # 5 full pages of 4 tokens: the prompt and the answer's first token
    if fad:  # what sharing would do: the follow-up reads the answer's decode-step keys as its prompt's
        monkeypatch.setattr(engine, "SHARING_OVERRIDE", ("allow_block_sharing", (True, "sharing kept")))
        plans.clear()
        assert _one_after_another(model, prompts)[1] != got[1]
        assert next(r.past for s in plans for r in s.plan.requests if r.request_id == "r1") == 20
