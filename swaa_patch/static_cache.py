"""A fixed-size SWAA cache whose decode step compiles into one CUDA graph.

:class:`SWAACache` (``cache.py``) keeps sliding layers bounded by concatenating and slicing, which
is flat in the context length but CPU-bound: every decode step launches hundreds of small kernels
from Python. ``StaticSWAACache`` holds the same keys in buffers that never change shape or
address, so a decode step can run under ``torch.compile(mode="reduce-overhead", fullgraph=True)``:

- a *bounded* layer (sliding, no ``force_fa_decode``) has one buffer of ``keep_first + 1 + W``
  slots: ``keep_first`` sink slots (slot s holds each row's position-s token), one spare slot, and
  a ring of ``W`` slots where the token of cache column ``c`` lives in slot ``keep_first + 1 +
  c % W``. Writing the new token first and then attending to every valid slot is exactly the rule:
  the ring then holds the last ``W`` columns, all inside the window; tokens at positions below
  ``keep_first`` count from their sink slot only, so nothing is counted twice. A decode step writes
  its token with one indexed write per tensor: to its ring slot and to its sink slot, or to the spare
  slot (never attended) for rows past their sinks;
- a *full* layer (``non_sliding_layers``, ``force_fa_decode`` layers) has ``max_cache_len`` slots
  indexed by column, like transformers' ``StaticCache``.

Columns count every token fed to the cache, padding included (all rows advance together, so one
slot index serves the batch); positions are per row, counted from each row's first real token.
What the rule needs besides the tensors lives in small per-cache tensors with static addresses:
the column counter, each row's count of real tokens, and which slots hold real tokens. A decode
step updates them in place with tensor ops only: nothing depends on a Python value that changes
between steps, so the compiled step never recompiles (transformers' own
``StaticSlidingWindowLayer`` keeps a Python int and recompiles at every step).

Prefill and any other multi-token forward run eagerly through the ordinary plan and backends
(any implementation, the fused cuDNN/Triton prefill included): the layer hands attention its
stored keys in position order followed by the new ones, as ``SWAACache`` does, then writes what
the rule keeps into the buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin

from .compat import TransformersMismatch
from .config import SWAAConfig


@dataclass
class _Pass:
    """What every layer does with its keys in the current forward, decided once by the cache."""

    decode: bool
    # decode steps
    write_slots: Tensor | None = None  # (B, 2) long: ring slot and sink-or-spare slot of the new token
    write_rows: Tensor | None = None  # (B, 2) long: the batch row of each write_slots entry
    column: Tensor | None = None  # (1,) long: column of the new token (full layers' slot)
    bounded_mask: Tensor | None = None  # (B, 1, 1, bounded slots) bool: the slots a bounded layer attends to
    full_mask: Tensor | None = None  # (B, 1, 1, max_cache_len) bool, for full layers (None: there are none)
    # multi-token passes
    order: Tensor | None = None  # (S,) long: buffer slots of the stored keys, in position order
    sink_source: Tensor | None = None  # (B, keep_first) long: column of [stored | new] per sink slot
    sink_found: Tensor | None = None  # (B, keep_first) bool
    ring_from: int = 0  # [stored | new] columns kept in the ring: [ring_from, total)
    ring_slots: Tensor | None = None  # their buffer slots
    first_column: int = 0  # full layers: column of the first new token
    new_tokens: int = 0


class StaticSWAACache(Cache):
    """SWAA's bounded cache with static shapes, for compiled decoding.

    Build it with the SWAA config and the number of layers (``max_cache_len`` is needed only when
    some layer keeps every key), or let the SWAA hook build it: ``model.generate(...,
    cache_implementation="static")`` on a SWAA model uses it, with transformers' automatic
    compilation of the decode step on GPU."""

    def __init__(self, config: SWAAConfig, num_layers: int, max_cache_len: int | None = None) -> None:
        if not config.enabled:
            raise ValueError("swaa_config: StaticSWAACache needs an enabled SWAAConfig (sliding_window_size set)")
        self.config = config
        self.keep_first = config.keep_first
        self.ring_size = config.sliding_window_size
        self.bounded_layers = frozenset(
            i
            for i in range(num_layers)
            if config.bounded_cache and config.is_sliding_layer(i) and not config.full_on_decode(i)
        )
        if len(self.bounded_layers) < num_layers and (max_cache_len is None or max_cache_len < 1):
            raise ValueError(
                "max_cache_len: layers that keep every key (non_sliding_layers, force_fa_decode) need "
                f"max_cache_len >= 1 (prompt + new tokens), got {max_cache_len!r}"
            )
        # only layers that keep every key need it: a bounded-only cache's shapes never depend on the length
        self.full_slots = (max_cache_len or 0) if len(self.bounded_layers) < num_layers else 0
        layers = [
            _BoundedStaticLayer(self, i) if i in self.bounded_layers else _FullStaticLayer(self, i)
            for i in range(num_layers)
        ]
        Cache.__init__(self, layers=layers)
        self.prefilled = False  # a Python flag that flips once: decode steps guard on it, stably
        self.column: Tensor | None = None  # (1,) long: columns written so far
        self.seen: Tensor | None = None  # (B,) long: real tokens per row so far
        self.sink_valid: Tensor | None = None  # (B, keep_first) bool
        self.ring_valid: Tensor | None = None  # (B, ring) bool: real, non-sink token in the slot
        self.ring_pos: Tensor | None = None  # (B, ring) long: its position
        self.full_valid: Tensor | None = None  # (B, max_cache_len) bool
        self.current: _Pass | None = None
        self.decode_pending = False  # a decode step the hook announced; planned by the first layer that writes

    # -- sizes ------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int | None:
        return None if self.seen is None else self.seen.shape[0]

    @property
    def bounded_slots(self) -> int:
        return self.ring_start + self.ring_size

    @property
    def ring_start(self) -> int:
        """First ring slot of a bounded layer's buffer: after the sinks and the spare slot."""
        return self.keep_first + 1

    def columns(self) -> int:
        """Columns written so far, as a Python int (a host sync: never inside a compiled step)."""
        return 0 if self.column is None else int(self.column.item())

    def _allocate(self, batch: int, device: torch.device) -> None:
        keep, ring = self.keep_first, self.ring_size
        self.column = torch.zeros(1, dtype=torch.long, device=device)
        self.seen = torch.zeros(batch, dtype=torch.long, device=device)
        self.sink_valid = torch.zeros(batch, keep, dtype=torch.bool, device=device)
        self.ring_valid = torch.zeros(batch, ring, dtype=torch.bool, device=device)
        self.ring_pos = torch.zeros(batch, ring, dtype=torch.long, device=device)
        self.full_valid = torch.zeros(batch, self.full_slots, dtype=torch.bool, device=device)
        for tensor in (self.column, self.seen, self.sink_valid, self.ring_valid, self.ring_pos, self.full_valid):
            _static(tensor)

    def reset(self) -> None:
        """Forget everything, keeping every buffer's address (a new generation on the same graphs)."""
        for tensor in (self.column, self.seen, self.sink_valid, self.ring_valid, self.ring_pos, self.full_valid):
            if tensor is not None:
                tensor.zero_()
        self.prefilled = False
        self.current = None
        self.decode_pending = False

    # -- multi-token passes (eager) -----------------------------------------------------------------
    def begin_forward(self, q_pos: Tensor, q_valid: Tensor) -> tuple[Tensor, Tensor]:
        """Plan a multi-token pass: returns the positions and validity of the stored keys bounded
        layers hand to attention (sink slots, then the ring's last ``W - 1`` columns in order), and
        fixes what they write back. Called by the SWAA hook, eagerly."""
        batch, n = q_pos.shape
        device = q_pos.device
        if self.column is None:
            self._allocate(batch, device)
        elif self.seen.shape[0] != batch:
            raise ValueError(f"input_ids: this StaticSWAACache holds batch {self.seen.shape[0]}, got batch {batch}")
        keep, ring = self.keep_first, self.ring_size
        self.decode_pending = False
        columns = self.columns()
        if self.full_valid.shape[1] and columns + n > self.full_slots:
            raise ValueError(
                f"max_cache_len: this cache holds {self.full_slots} tokens on its full layers; "
                f"{columns} are stored and this pass adds {n}"
            )
        stored = min(columns, ring - 1)
        ring_order = (torch.arange(columns - stored, columns, device=device) % ring).long()
        order = torch.cat([torch.arange(keep, device=device), self.ring_start + ring_order])
        stored_pos = torch.cat([torch.arange(keep, device=device).expand(batch, keep), self.ring_pos[:, ring_order]], 1)
        stored_valid = torch.cat([self.sink_valid, self.ring_valid[:, ring_order]], 1)
        # sinks: slot s takes the real token at position s, from the slot itself or from this pass
        slots = torch.arange(keep, device=device)
        incoming = (q_valid[:, :, None] & (q_pos[:, :, None] == slots[None, None, :])).int()
        found = incoming.any(dim=1)
        source = keep + stored + incoming.argmax(dim=1)
        # ring: the newest min(total columns, W) columns of [ring part of stored | new]
        kept = min(columns + n, ring)
        ring_columns = torch.arange(columns + n - kept, columns + n, device=device)
        total = keep + stored + n
        self.current = _Pass(
            decode=False,
            order=order,
            sink_source=source,
            sink_found=found,
            ring_from=total - kept,
            ring_slots=self.ring_start + ring_columns % ring,
            first_column=columns,
            new_tokens=n,
        )
        # metadata after the pass
        all_pos = torch.cat([stored_pos[:, keep:], q_pos], 1)[:, -kept:]
        all_valid = torch.cat([stored_valid[:, keep:], q_valid & (q_pos >= keep)], 1)[:, -kept:]
        ring_index = ring_columns % ring
        self.ring_pos[:, ring_index] = all_pos
        self.ring_valid[:, ring_index] = all_valid
        self.sink_valid |= found
        if self.full_valid.shape[1]:
            self.full_valid[:, columns : columns + n] = q_valid
        self.seen += q_valid.sum(-1)
        self.column += n
        self.prefilled = True
        return stored_pos, stored_valid

    # -- decode steps (compiled) ----------------------------------------------------------------
    def expect_decode(self) -> None:
        """Announce a one-token step (the SWAA hook, with Python values only). The step's tensor work
        is done by :meth:`layer_pass` when the first layer writes, inside the model's forward: a
        compiled step is then one graph (one CUDA graph), not the hook's frame and the forward's."""
        self.current = None
        self.decode_pending = True

    def layer_pass(self) -> _Pass | None:
        """What a layer does with its keys in this forward (planning an announced decode step first)."""
        if self.decode_pending:
            self.decode_pending = False
            self.begin_decode()
        return self.current

    def begin_decode(self) -> None:
        """Plan a one-token step on a filled cache with tensor ops only (it runs inside the compiled
        step): the pass's writes and the key masks of bounded and full layers."""
        keep, ring = self.keep_first, self.ring_size
        column = self.column
        slot = column % ring
        pos = self.seen
        is_sink = pos < keep
        sink_select = (torch.arange(keep, device=pos.device)[None, :] == pos[:, None]) & is_sink[:, None]
        self.sink_valid.logical_or_(sink_select)
        self.ring_valid.index_copy_(1, slot, (~is_sink)[:, None])
        self.ring_pos.index_copy_(1, slot, pos[:, None])
        full_mask = None
        if self.full_valid.shape[1]:
            self.full_valid.index_fill_(1, column, True)
            full_mask = self.full_valid[:, None, None, :]
        sink_or_spare = torch.where(is_sink, pos, keep)  # slot keep is the spare one
        write_slots = torch.stack([(self.ring_start + slot).expand_as(pos), sink_or_spare], dim=1)
        write_rows = torch.arange(pos.shape[0], device=pos.device)[:, None].expand_as(write_slots)
        spare = torch.zeros_like(self.sink_valid[:, :1])
        bounded_mask = torch.cat([self.sink_valid, spare, self.ring_valid], 1)[:, None, None, :]
        self.current = _Pass(
            decode=True, write_rows=write_rows, write_slots=write_slots, column=column.clone(),
            bounded_mask=bounded_mask, full_mask=full_mask,
        )
        self.seen.add_(1)
        self.column.add_(1)

    def get_seq_length(self, layer_idx: int = 0) -> Tensor | int:
        """The column counter as a tensor (transformers' static layers do the same: an int would be
        a host sync and a recompile at every compiled step)."""
        return 0 if self.column is None else self.column[0]


def _static(tensor: Tensor) -> None:
    """Tag a buffer as living at a fixed address (CUDA graphs replay on it; in-place writes are
    then no graph break). Not allowed while tracing, where buffers are never created anyway."""
    if not torch.compiler.is_compiling():
        torch._dynamo.mark_static_address(tensor)


class _StaticLayer(CacheLayerMixin):
    is_compileable = True
    is_croppable = False

    def __init__(self, cache: StaticSWAACache, layer_idx: int) -> None:
        super().__init__()
        self._cache = cache
        self.layer_idx = layer_idx

    def _pass(self) -> _Pass:
        current = self._cache.layer_pass()
        if current is None:
            raise TransformersMismatch(
                f"StaticSWAACache layer {self.layer_idx} was updated by a forward that SWAA's hook did not plan "
                "(the cache reached the model under an argument SWAA did not read)"
            )
        return current

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        batch, heads, _, dim = key_states.shape
        slots = self.slots()
        self.keys = key_states.new_zeros(batch, heads, slots, dim)
        self.values = value_states.new_zeros(batch, value_states.shape[1], slots, value_states.shape[-1])
        _static(self.keys)
        _static(self.values)
        self.device = key_states.device
        self.is_initialized = True

    def slots(self) -> int:
        raise NotImplementedError

    def get_seq_length(self) -> Tensor | int:
        return self._cache.get_seq_length()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.slots(), 0

    def get_max_length(self) -> int:
        return self.slots()

    def reset(self) -> None:
        self._cache.reset()


class _BoundedStaticLayer(_StaticLayer):
    """keep_first sink slots, a spare slot, then a ring of W slots."""

    is_sliding = True

    def slots(self) -> int:
        return self._cache.bounded_slots

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        current = self._pass()
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if current.decode:
            # an index_put_ (advanced indexing), not scatter_: inductor writes index_put_ in place,
            # while a scatter_ on a graph input became a copy of the whole buffer, the scatter, and a
            # copy back (two full-buffer kernels per tensor and layer in the H200 decode profile)
            for buffer, new in ((self.keys, key_states), (self.values, value_states)):
                both = new[:, :, 0].unsqueeze(1).expand(-1, 2, -1, -1)  # (B, 2, H, D): one per written slot
                buffer[current.write_rows, :, current.write_slots] = both
            return self.keys, self.values
        keys = torch.cat([self.keys[:, :, current.order], key_states], dim=2)
        values = torch.cat([self.values[:, :, current.order], value_states], dim=2)
        for buffer, written in ((self.keys, keys), (self.values, values)):
            _write_back(buffer, written, current, self._cache.keep_first)
        return keys, values


def _write_back(buffer: Tensor, written: Tensor, current: _Pass, keep: int) -> None:
    """After a multi-token pass: sink slots take their rows' sink tokens, the ring the newest columns."""
    batch, heads, _, dim = buffer.shape
    if keep:
        index = current.sink_source[:, None, :, None].expand(batch, heads, keep, dim)
        sinks = written.gather(2, index.clamp_max(written.shape[2] - 1))
        found = current.sink_found[:, None, :, None]
        buffer[:, :, :keep] = torch.where(found, sinks, buffer[:, :, :keep])
    buffer.index_copy_(2, current.ring_slots, written[:, :, current.ring_from :])


class _FullStaticLayer(_StaticLayer):
    """max_cache_len slots indexed by column: every key, for layers that may attend to all."""

    def slots(self) -> int:
        return self._cache.full_slots

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        current = self._pass()
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if current.decode:
            self.keys.index_copy_(2, current.column, key_states)
            self.values.index_copy_(2, current.column, value_states)
            return self.keys, self.values
        start, end = current.first_column, current.first_column + current.new_tokens
        self.keys[:, :, start:end] = key_states
        self.values[:, :, start:end] = value_states
        return self.keys[:, :, :end], self.values[:, :, :end]


@dataclass
class StaticDecodePlan:
    """What a compiled decode step on a StaticSWAACache needs: one key mask per layer kind, built
    by the cache from tensors only (nothing in the step depends on a changing Python value) when
    the first layer writes its key."""

    cache: StaticSWAACache
    cache_arg: str
    shared: dict = field(default_factory=dict)  # what a backend builds once per step for every layer alike

    def once(self, key: object, build: Callable[[], Any]) -> Any:
        """``build()``, run once per step and key: a kernel's per-step objects (flex's BlockMask) are
        the same for every layer of a kind, and building them per layer multiplied the compiled
        step's trace and ops by the layer count."""
        if key not in self.shared:
            self.shared[key] = build()
        return self.shared[key]

    def layer_kind(self, layer_idx: int) -> str:
        return "bounded" if layer_idx in self.cache.bounded_layers else "full"

    def key_count(self, layer_idx: int) -> int:
        return self.cache.bounded_slots if layer_idx in self.cache.bounded_layers else self.cache.full_slots

    def key_mask(self, layer_idx: int) -> Tensor:
        current = self.cache.current
        if current is None or not current.decode:
            raise TransformersMismatch(
                f"layer {layer_idx} attends in a static decode step before any layer wrote to the StaticSWAACache"
            )
        return current.bounded_mask if layer_idx in self.cache.bounded_layers else current.full_mask

    def describe_keys(self, layer_idx: int) -> str:
        return f"a static decode step over {self.key_count(layer_idx)} cache slots"


def plan_static_decode(cache: StaticSWAACache, cache_arg: str) -> StaticDecodePlan:
    cache.expect_decode()
    return StaticDecodePlan(cache, cache_arg)


# inductor's pairwise fusion attempts per group of nodes that read one buffer (its default: 64). The
# decode step's per-step tensors (write slots, masks, RoPE tables) are each read by every layer, so
# each makes a group of 36-72 nodes in the 4B shape, and the attempts across layers (which can never
# fuse: each layer depends on the one before) took 7-11 s of the H200's cold compile. A layer's own
# fusable pairs sit next to each other in a group; on a CPU the step compiled to the same kernels with 2.
FUSION_PAIR_ATTEMPTS = 8


def decode_compile_config(device: torch.device):
    """transformers' ``CompileConfig`` for decode steps on a StaticSWAACache: fullgraph (a graph
    break would be a SWAA bug, so it fails loudly instead of running slowly), static shapes, CUDA
    graphs (what ``mode="reduce-overhead"`` sets, given as options beside the fusion-attempt bound).
    transformers compiles automatically on GPUs only; on a CPU this asks for dynamo alone (backend
    "eager"), which checks tracing and recompiles, not speed."""
    from transformers import CompileConfig

    if device.type == "cuda":
        import torch._inductor.config as inductor_config

        options: dict[str, Any] = {"triton.cudagraphs": True}
        if hasattr(inductor_config, "max_fusion_buffer_group_pairwise_attempts"):
            options["max_fusion_buffer_group_pairwise_attempts"] = FUSION_PAIR_ATTEMPTS
        return CompileConfig(fullgraph=True, dynamic=False, mode=None, options=options)
    config = CompileConfig(fullgraph=True, dynamic=False, backend="eager", mode=None)
    config._compile_all_devices = True
    return config


def static_generate_kwargs(device: torch.device) -> dict:
    """``model.generate`` arguments for compiled SWAA decoding on ``device``."""
    return {"cache_implementation": "static", "compile_config": decode_compile_config(device)}


COMPILE_MODES = ("auto", "on", "off")


def compiled_generation(mode: str, device: torch.device) -> dict:
    """``generate`` arguments for the ``compile`` setting of ``swaa eval`` / ``swaa distill``:
    ``auto`` compiles decode steps on CUDA (CUDA graphs pay there; on a CPU the eager bounded cache
    is the faster path), ``on`` always, ``off`` never (the dynamic bounded cache)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile: must be one of {COMPILE_MODES}, got {mode!r}")
    if mode == "off" or (mode == "auto" and torch.device(device).type != "cuda"):
        return {}
    return static_generate_kwargs(torch.device(device))


class CompiledConfigs:
    """Keeps the compiled decode steps of one (model, SWAA config) at a time in a process that runs
    several one after another (the rows of ``swaa eval``).

    Dynamo caches compiled frames per code object (the decoder's forward), shared by every model
    and SWAA configuration in the process; each new one adds an entry, and once a frame holds
    ``torch._dynamo.config.recompile_limit`` entries (8) a fullgraph compile fails hard: the 9th
    compiled eval row died so on an H200 (benchmarks/results/calibration_demo.md). Rows do not come
    back, so switching drops the previous one's graphs (``torch._dynamo.reset``)."""

    def __init__(self) -> None:
        self.current: Any = None

    def switch_to(self, key: Any, mode: str, device: torch.device) -> None:
        """Call before generating with ``key`` (e.g. the eval row's name) under ``compile`` ``mode``."""
        if not compiled_generation(mode, device):
            return
        if self.current is not None and key != self.current:
            torch._dynamo.reset()
        self.current = key


def filled_batch(prompts: list[list[int]], mode: str, device: torch.device, batch_size: int) -> list[list[int]]:
    """``prompts`` followed by copies of its last prompt up to ``batch_size`` rows when decoding is
    compiled (callers drop the copies' answers): the compiled decode step is specialised to its batch
    size, so a short last batch (of every dataset and every eval row) would compile it again (30-55 s
    for a 4B model on an H200, benchmarks/results/decode_speed.md). Unchanged when not compiled."""
    if not compiled_generation(mode, device):
        return prompts
    return prompts + prompts[-1:] * max(0, batch_size - len(prompts))
