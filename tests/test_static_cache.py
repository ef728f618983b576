"""StaticSWAACache: fixed buffers of sink slots + a ring, decode steps with tensor ops only.

Generation through it follows the float64 reference of the rule (families, backends, left
padding, sinks, force_fa_decode, non_sliding_layers, ring wrap); its compiled decode step never
recompiles; chunked prefill fills it; bad use is refused with errors naming the field."""

from __future__ import annotations

import os

import pytest
import torch
from reference import RefRule, generate_with_reference, reference_model, rel_error
from test_equivalence import _left_padded
from tiny import FAMILY_BACKENDS, VOCAB, tiny_model

from swaa_patch import StaticSWAACache, SWAAConfig, apply_swaa, chunked_prefill
from swaa_patch.backends.static_decode import KERNELS, regions_reuse_traces, static_decode_kernel
from swaa_patch.compat import cache_kwargs, output_cache
from swaa_patch.static_cache import static_generate_kwargs

TOL = 1e-5
RUNS_TRITON = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
CONFIGS = {
    # every layer bounded; keep_first larger than the window
    "bounded": (SWAAConfig(sliding_window_size=3, keep_first=4), RefRule(3, 4)),
    # full layers and force_fa_decode layers keep every key; the rest ring
    "mixed": (
        SWAAConfig(sliding_window_size=4, keep_first=2, force_fa_decode=[0], non_sliding_layers=[1]),
        RefRule(4, 2, [0], (1,)),
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("family, attn", FAMILY_BACKENDS)
def test_static_generation_matches_reference(family, attn, name):
    """3W+ new tokens wrap the ring several times; row 0 unpadded, rows 1-2 left-padded (row 2's
    prompt is shorter than keep_first, so decode steps fill its sink slots)."""
    config, rule = CONFIGS[name]
    model = tiny_model(family, attn)
    ref = reference_model(model)
    apply_swaa(model, config)
    ids, valid = _left_padded(3, 12, [0, 5, 10], seed=4)
    new = 3 * config.sliding_window_size + 3
    got, expected, tokens, cache = generate_with_reference(
        model, ref, rule, ids, valid, new, with_cache=True, cache_implementation="static"
    )
    assert isinstance(cache, StaticSWAACache)
    assert rel_error(got, expected) < TOL
    allowed = expected.clone()
    allowed[..., model.config.eos_token_id] = float("-inf")  # min_new_tokens suppresses eos
    picked = allowed.gather(-1, tokens[:, ids.shape[1] :, None])[..., 0]
    assert torch.all(allowed.max(-1).values - picked < 1e-9)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("family, attn", FAMILY_BACKENDS)
def test_flex_split_k_decode_matches_reference(family, attn, name):
    """The same generations with decode steps on the flex split-K kernel (softcap as a score_mod)."""
    with static_decode_kernel("flex"):
        test_static_generation_matches_reference(family, attn, name)


@pytest.mark.skipif(not RUNS_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gemma3_text"])
def test_triton_split_k_decode_matches_reference(family, name):
    """The same generations with decode steps on SWAA's Triton split-K kernel. The kernel sees only
    q/k/v, the scaling and the softcap, so three families cover it: plain, softcapped (Gemma2) and a
    query_pre_attn_scalar scaling (Gemma3); the prefill backend does not matter to a decode kernel."""
    with static_decode_kernel("triton"):
        test_static_generation_matches_reference(family, "eager", name)


def test_static_decode_kernel_setting_is_checked_and_restored():
    from swaa_patch.backends import static_decode

    with pytest.raises(ValueError, match=r"static_decode_kernel: must be one of \('auto', 'sdpa', 'flex', 'triton'\), got 'cudnn'"):
        static_decode.set_static_decode_kernel("cudnn")
    with pytest.raises(RuntimeError), static_decode_kernel("flex"):
        assert static_decode.SETTING.get() == "flex"
        raise RuntimeError
    assert static_decode.SETTING.get() == "auto" and KERNELS == ("sdpa", "flex", "triton")


def test_auto_decode_kernel_is_triton_on_cuda_only(monkeypatch):
    """The default picks SWAA's Triton kernel on CUDA (benchmarks/results/decode_kernel_tuning.md) and
    sdpa on the CPU; where the Triton kernel does not apply (no triton, head_dim 8, float64) auto takes
    flex instead; a named kernel wins on any device."""
    import importlib.util

    from swaa_patch.backends import static_decode, triton_decode
    from swaa_patch.backends.call import AttentionCall
    from swaa_patch.static_cache import StaticDecodePlan

    assert static_decode.kernel_for(torch.device("cuda")) == "triton"
    assert static_decode.kernel_for(torch.device("cpu")) == "sdpa"
    with static_decode_kernel("sdpa"):
        assert static_decode.kernel_for(torch.device("cuda")) == "sdpa"
    with static_decode_kernel("flex"):
        assert static_decode.kernel_for(torch.device("cpu")) == "flex"
    query = torch.zeros(1, 4, 1, 16)
    assert triton_decode.supports(query)
    assert not triton_decode.supports(torch.zeros(1, 4, 1, 8)) and not triton_decode.supports(query.double())

    def dispatched(q):
        call = AttentionCall(None, q, q, q, StaticDecodePlan(None, "past_key_values"), 1.0)
        return static_decode.dispatch_static_decode(call)

    monkeypatch.setattr(static_decode, "kernel_for", lambda device: "triton")  # as on a GPU
    assert dispatched(query) is static_decode.triton_split_k_attention
    assert dispatched(torch.zeros(1, 4, 1, 8)) is static_decode.flex_split_k_attention
    with static_decode_kernel("triton"):  # named: the kernel itself refuses what it cannot compute
        assert dispatched(torch.zeros(1, 4, 1, 8)) is static_decode.triton_split_k_attention
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find_spec(name, *a))
    assert dispatched(query) is static_decode.flex_split_k_attention


def test_bounded_layers_hold_sinks_plus_window_at_any_length():
    config = SWAAConfig(sliding_window_size=5, keep_first=3, non_sliding_layers=[2])
    model = apply_swaa(tiny_model("qwen3", "sdpa"), config)
    for length in (8, 60):
        ids = torch.randint(3, VOCAB, (2, length))
        with torch.no_grad():
            cache = output_cache(
                model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0,
                               cache_implementation="static", return_dict_in_generate=True)
            )
        for i, layer in enumerate(cache.layers):
            # the full layer holds what generate asked for (the last new token is never fed back)
            slots = length + 4 - 1 if i == 2 else 3 + 1 + 5  # sinks, the spare slot, the ring
            assert layer.keys.shape[2] == slots


@pytest.mark.parametrize("family, attn, config, kernel", [
    ("qwen3", "sdpa", SWAAConfig(sliding_window_size=3, keep_first=2, non_sliding_layers=[1]), "sdpa"),
    ("gemma2", "eager", SWAAConfig(sliding_window_size=4, keep_first=1, force_fa_decode=[3]), "sdpa"),
    ("qwen3", "sdpa", SWAAConfig(sliding_window_size=3, keep_first=2, non_sliding_layers=[1]), "flex"),
    ("gemma2", "eager", SWAAConfig(sliding_window_size=4, keep_first=1, force_fa_decode=[3]), "flex"),  # softcap
    *([("gemma2", "eager", SWAAConfig(sliding_window_size=4, keep_first=1, force_fa_decode=[3]), "triton")]
      if RUNS_TRITON else []),  # one op per layer: its recompiles do not depend on the family
])
def test_compiled_decode_never_recompiles(family, attn, config, kernel):
    """fullgraph compile of every decode step: one graph (the hook announces the step, the forward plans it),
    none added across the window boundary and the ring wrap; tokens equal the eager path's."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = apply_swaa(tiny_model(family, attn), config)
    ids, valid = _left_padded(2, 9, [0, 3], seed=2)
    compile_kwargs = static_generate_kwargs(torch.device("cpu"))  # dynamo alone on a CPU
    kwargs = dict(attention_mask=valid.long(), max_new_tokens=4 * config.sliding_window_size, do_sample=False,
                  pad_token_id=0, min_new_tokens=4 * config.sliding_window_size)
    before = counters["stats"]["unique_graphs"]
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True), static_decode_kernel(kernel):
        compiled = model.generate(ids, **compile_kwargs, **kwargs)
        again = model.generate(ids, **compile_kwargs, **kwargs)
    assert counters["stats"]["unique_graphs"] - before == 1  # one graph: the hook plans with Python values only
    with torch.no_grad():
        eager = model.generate(ids, **kwargs)
    assert torch.equal(compiled, eager) and torch.equal(again, eager)


def test_flex_decode_builds_one_block_mask_per_layer_kind(monkeypatch):
    """The flex decode kernel's BlockMask is built once per step for each layer kind (bounded, full),
    not once per layer: per layer it multiplied the compiled step's trace (36 layers of the 4B shape:
    11.8 s of dynamo on a CPU against 4.8 s for sdpa) and its ops by the layer count."""
    from torch.nn.attention.flex_attention import BlockMask

    built = []
    original = BlockMask.from_kv_blocks.__func__
    monkeypatch.setattr(BlockMask, "from_kv_blocks", classmethod(lambda cls, *a, **k: built.append(1) or original(cls, *a, **k)))
    config = SWAAConfig(sliding_window_size=3, keep_first=2, non_sliding_layers=[1])  # 3 bounded layers, 1 full
    model = apply_swaa(tiny_model("qwen3", "sdpa"), config)
    ids, valid = _left_padded(2, 9, [0, 3], seed=2)
    steps = 5
    with torch.no_grad(), static_decode_kernel("flex"):
        model.generate(ids, attention_mask=valid.long(), max_new_tokens=steps + 1, min_new_tokens=steps + 1,
                       do_sample=False, pad_token_id=0, cache_implementation="static")  # fmt: skip
    assert model.config.num_hidden_layers == 4 and len(built) == 2 * steps


@pytest.mark.skipif(not regions_reuse_traces(), reason="this torch's dynamo retraces compile regions (plain calls)")
@pytest.mark.parametrize("kernel", ["sdpa", "flex"])  # the triton kernel is one op per layer already
def test_compiled_step_traces_decode_attention_once_per_layer_kind(kernel):
    """The decode attention is a compile region: the step's graph calls one subgraph per layer kind
    (bounded, full: their key counts differ) from every layer, so dynamo, AOT autograd and inductor
    handle it once per kind, not once per layer. Per layer, the 4B shape's 36 copies were most of what
    SWAA's cold compile spent beyond stock's on an H200."""
    from transformers import CompileConfig

    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compile_config = CompileConfig(fullgraph=True, dynamic=False, backend=record, mode=None)
    compile_config._compile_all_devices = True
    torch._dynamo.reset()
    config = SWAAConfig(sliding_window_size=3, keep_first=2, non_sliding_layers=[1, 3])  # 2 bounded layers, 2 full
    model = apply_swaa(tiny_model("qwen3", "sdpa"), config)
    ids, valid = _left_padded(2, 9, [0, 3], seed=2)
    with torch.no_grad(), static_decode_kernel(kernel):
        model.generate(ids, attention_mask=valid.long(), max_new_tokens=4, min_new_tokens=4, do_sample=False,
                       pad_token_id=0, cache_implementation="static", compile_config=compile_config)  # fmt: skip
    assert len(graphs) == 1
    calls = [n for n in graphs[0].graph.nodes if n.target is torch.ops.higher_order.invoke_subgraph]
    subgraphs = {n.args[1] for n in calls}  # the region's identifier: one per distinct signature
    assert model.config.num_hidden_layers == 4 and len(calls) == 4 and len(subgraphs) == 2
    attention = "flex_attention" if kernel == "flex" else "scaled_dot_product_attention"
    assert attention not in str(graphs[0].graph)  # only inside the subgraphs
    assert all(attention in str(getattr(graphs[0], name).graph) for name in subgraphs)


def test_chunked_prefill_fills_a_static_cache():
    config = SWAAConfig(sliding_window_size=4, keep_first=2, non_sliding_layers=[3])
    model = apply_swaa(tiny_model("llama", "sdpa"), config)
    ids, valid = _left_padded(2, 31, [0, 6], seed=5)
    cache = StaticSWAACache(config, model.config.num_hidden_layers, max_cache_len=40)
    with torch.no_grad():
        one_shot = model(input_ids=ids, attention_mask=valid.long()).logits
        result = chunked_prefill(model, ids, valid.long(), chunk_size=7, return_all_logits=True, cache=cache)
        assert result.cache is cache
        assert rel_error(result.logits, one_shot, valid) < TOL
        # decode on top equals decoding on a dynamic chunked prefill
        token = result.logits[:, -1:].argmax(-1)
        mask = torch.cat([valid.long(), torch.ones(2, 1, dtype=torch.long)], 1)
        pids = mask.long().cumsum(-1)[:, -1:] - 1
        step = model(input_ids=token, attention_mask=mask, position_ids=pids, **cache_kwargs(model, cache))
        dynamic = chunked_prefill(model, ids, valid.long(), chunk_size=7)
        expected = model(input_ids=token, attention_mask=mask, position_ids=pids,
                         **cache_kwargs(model, dynamic.cache))
    assert rel_error(step.logits, expected.logits) < TOL


def test_bad_use_is_refused():
    with pytest.raises(ValueError, match="StaticSWAACache needs an enabled SWAAConfig"):
        StaticSWAACache(SWAAConfig(), 4)
    with pytest.raises(ValueError, match="max_cache_len: layers that keep every key"):
        StaticSWAACache(SWAAConfig(sliding_window_size=4, non_sliding_layers=[1]), 4)
    config = SWAAConfig(sliding_window_size=4, force_fa_decode=True)
    model = apply_swaa(tiny_model("qwen3", "sdpa"), config)
    cache = StaticSWAACache(config, 4, max_cache_len=10)
    with torch.no_grad(), pytest.raises(ValueError, match="max_cache_len: this cache holds 10 tokens"):
        model(torch.randint(3, VOCAB, (1, 11)), **cache_kwargs(model, cache))
    cache = StaticSWAACache(config, 4, max_cache_len=10)
    with torch.no_grad():
        model(torch.randint(3, VOCAB, (2, 4)), **cache_kwargs(model, cache))
        with pytest.raises(ValueError, match="input_ids: this StaticSWAACache holds batch 2, got batch 3"):
            model(torch.randint(3, VOCAB, (3, 4)), **cache_kwargs(model, cache))
    # a decode step whose attention runs before any layer wrote its key (a layer that skips the cache,
    # as KV-sharing layers do) fails loudly instead of attending over last step's mask
    from swaa_patch.compat import TransformersMismatch
    from swaa_patch.static_cache import plan_static_decode

    plan = plan_static_decode(cache, "past_key_values")
    with pytest.raises(TransformersMismatch, match="layer 0 attends in a static decode step before any layer wrote"):
        plan.key_mask(0)
    cache.layers[0].update(torch.zeros_like(cache.layers[0].keys[:, :, :1]), torch.zeros_like(cache.layers[0].values[:, :, :1]))
    assert plan.key_mask(0).shape == (2, 1, 1, cache.full_slots)  # force_fa_decode: every layer keeps every key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/run_gpu.sh decode)")
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cuda_graph_decode_matches_reference(name, kernel):
    """The real thing: inductor + CUDA graphs (reduce-overhead, fullgraph) on a GPU, float32,
    against the float64 reference; a second generation replays without a recompile."""
    with static_decode_kernel(kernel):
        _cuda_graph_decode_matches_reference(name)


def _cuda_graph_decode_matches_reference(name):
    torch._dynamo.reset()  # each kernel compiles its own graphs
    config, rule = CONFIGS[name]
    model = tiny_model("qwen3", "sdpa").cuda()
    ref = reference_model(model)
    apply_swaa(model, config)
    ids, valid = _left_padded(3, 12, [0, 5, 10], seed=4)
    ids, valid = ids.cuda(), valid.cuda()
    new = 3 * config.sliding_window_size + 3
    extra = static_generate_kwargs(torch.device("cuda"))
    got, expected, _, cache = generate_with_reference(model, ref, rule, ids, valid, new, with_cache=True, **extra)
    assert isinstance(cache, StaticSWAACache)
    assert rel_error(got, expected) < 1e-4  # TF32-free float32 on the GPU; kernels differ from the CPU's
    with torch._dynamo.config.patch(error_on_recompile=True):
        again, expected_again, _ = generate_with_reference(model, ref, rule, ids, valid, new, **extra)
    assert rel_error(again, expected_again) < 1e-4


def test_compiled_decode_write_is_in_place():
    """The decode step's write to a bounded layer compiles (inductor, here on the CPU) to an in-place
    indexed write: a scatter_ on the buffer compiled to a copy of the whole buffer, the scatter and a
    copy back (two full-buffer kernels per tensor and layer, 933 vs stock's 783 kernels a step on the
    H200). The written slots hold the new token."""
    from torch._inductor.utils import run_and_get_code

    config = SWAAConfig(sliding_window_size=4, keep_first=2)
    model = apply_swaa(tiny_model("qwen3", "sdpa"), config)
    cache = StaticSWAACache(config, model.config.num_hidden_layers, max_cache_len=20)
    ids, valid = _left_padded(2, 9, [0, 3], seed=4)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=valid.long(), **cache_kwargs(model, cache))
    layer = cache.layers[0]
    cache.begin_decode()
    slots = cache.current.write_slots.clone()
    new_k, new_v = (torch.randn(2, layer.keys.shape[1], 1, layer.keys.shape[3]) for _ in range(2))
    torch._dynamo.reset()
    _, code = run_and_get_code(torch.compile(layer.update, fullgraph=True), new_k, new_v)
    assert "scatter" not in "\n".join(code)
    for b in range(2):
        for slot in slots[b].tolist():
            assert torch.equal(layer.keys[b, :, slot], new_k[b, :, 0]) and torch.equal(
                layer.values[b, :, slot], new_v[b, :, 0]
            )


def test_compiled_decode_step_reads_the_forward_signature_once():
    """The hook reads the forward's parameter names from the model (stored when it was installed):
    inside a compiled step dynamo would otherwise trace inspect.signature through an lru_cache at
    every compile and warn users about it."""
    import warnings

    model = apply_swaa(tiny_model("qwen3", "sdpa"), SWAAConfig(sliding_window_size=4, keep_first=2))
    ids = torch.randint(3, VOCAB, (1, 9), generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    torch._dynamo.utils.warn_once_cache.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.generate(ids, max_new_tokens=3, do_sample=False, **static_generate_kwargs(torch.device("cpu")))
    assert not [str(w.message) for w in caught if "lru_cache" in str(w.message)]


def test_cuda_compile_config_is_reduce_overhead_with_bounded_fusion_attempts():
    """CUDA graphs as mode="reduce-overhead" sets them, plus the fusion-attempt bound; every option is one
    this torch's inductor knows (torch.compile refuses unknown ones only when it compiles, on the GPU)."""
    import torch._inductor

    from swaa_patch.static_cache import FUSION_PAIR_ATTEMPTS, decode_compile_config

    config = decode_compile_config(torch.device("cuda"))
    assert config.mode is None and config.fullgraph and config.dynamic is False
    assert config.options == {"triton.cudagraphs": True, "max_fusion_buffer_group_pairwise_attempts": FUSION_PAIR_ATTEMPTS}
    assert set(config.options) <= set(torch._inductor.list_options())
    assert torch._inductor.list_mode_options("reduce-overhead") == {"triton.cudagraphs": True}
