"""SWAAConfig: what Sliding Window Attention Adaptation does to a model, validated once.

The config is a frozen dataclass that is *also* a ``dict`` holding the same fields. That is
deliberate: ``model.config.swaa_config = SWAAConfig(...)`` (the reference's usage) must survive
``save_pretrained``, and transformers serialises config attributes with ``json.dumps``, which
accepts dicts but not arbitrary objects. After ``from_pretrained`` the attribute comes back as a
plain dict; :func:`SWAAConfig.coerce` turns it back into a validated config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

FIELD_NAMES = (
    "sliding_window_size",
    "keep_first",
    "force_fa_decode",
    "non_sliding_layers",
    "query_chunk_size",
    "bounded_cache",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _layer_tuple(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name}: must be a list of layer indices, got {value!r}")
    items = tuple(value)
    for item in items:
        if not _is_int(item) or item < 0:
            raise ValueError(f"{name}: layer indices must be integers >= 0, got {item!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"{name}: layer indices must be unique, got {list(items)}")
    return tuple(sorted(items))


@dataclass(frozen=True, eq=True)
class SWAAConfig(dict):
    """How a full-attention model is turned into a sliding-window model.

    Attributes:
        sliding_window_size: W, the number of positions a query sees *including itself*
            (flash-attn ``window_size=(W-1, 0)``). ``None`` disables SWAA: the model is unchanged.
        keep_first: number of sink tokens (the first real tokens of each sequence) that every
            query always sees.
        force_fa_decode: ``True`` makes decode steps (one new token per sequence on a non-empty
            cache) attend to the whole cache on every layer; a list restricts that to those
            layers. In training, answer tokens attend fully on the same layers.
        non_sliding_layers: layers that keep full attention everywhere.
        query_chunk_size: an execution detail, not semantics: eager/sdpa process queries in
            chunks of this size so no layer materialises an n x n mask (``None``: max(1024, W)).
        bounded_cache: also an execution detail: generation keeps only sinks + the last W - 1
            tokens on sliding layers without force_fa_decode (``False`` keeps every key).
    """

    sliding_window_size: int | None = None
    keep_first: int = 0
    force_fa_decode: bool | tuple[int, ...] = False
    non_sliding_layers: tuple[int, ...] = ()
    query_chunk_size: int | None = None
    bounded_cache: bool = True

    def __post_init__(self) -> None:
        window = self.sliding_window_size
        if window is not None and (not _is_int(window) or window <= 0):
            raise ValueError(f"sliding_window_size: must be None or an integer >= 1, got {window!r}")
        if not _is_int(self.keep_first) or self.keep_first < 0:
            raise ValueError(f"keep_first: must be an integer >= 0, got {self.keep_first!r}")
        chunk = self.query_chunk_size
        if chunk is not None and (not _is_int(chunk) or chunk <= 0):
            raise ValueError(f"query_chunk_size: must be None or an integer >= 1, got {chunk!r}")
        if not isinstance(self.bounded_cache, bool):
            raise ValueError(f"bounded_cache: must be true or false, got {self.bounded_cache!r}")
        fad = self.force_fa_decode
        if not isinstance(fad, bool):
            object.__setattr__(self, "force_fa_decode", _layer_tuple(fad, "force_fa_decode"))
        object.__setattr__(
            self, "non_sliding_layers", _layer_tuple(self.non_sliding_layers, "non_sliding_layers")
        )
        dict.update(self, self.to_dict())

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        fad = self.force_fa_decode
        return {
            "sliding_window_size": self.sliding_window_size,
            "keep_first": self.keep_first,
            "force_fa_decode": fad if isinstance(fad, bool) else list(fad),
            "non_sliding_layers": list(self.non_sliding_layers),
            "query_chunk_size": self.query_chunk_size,
            "bounded_cache": self.bounded_cache,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = "swaa_config") -> SWAAConfig:
        """Build from a mapping; errors name the JSON path of the bad field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: must be an object with fields {list(FIELD_NAMES)}, got {data!r}")
        unknown = sorted(set(data) - set(FIELD_NAMES))
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {unknown}; allowed: {list(FIELD_NAMES)}")
        try:
            return cls(**dict(data))
        except ValueError as err:
            raise ValueError(f"{path}.{err}") from None

    @classmethod
    def coerce(cls, value: SWAAConfig | Mapping[str, Any] | None) -> SWAAConfig | None:
        """Accept what may sit on ``model.config.swaa_config`` (object, dict from JSON, None)."""
        if value is None or isinstance(value, cls):
            return value
        return cls.from_dict(value)

    def __reduce__(self):
        # dict subclass + frozen dataclass: rebuild through __init__ so validation reruns.
        return (type(self)._from_fields, (self.to_dict(),))

    @classmethod
    def _from_fields(cls, data: dict[str, Any]) -> SWAAConfig:
        return cls(**data)

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"SWAAConfig({inner})"

    __hash__ = None  # type: ignore[assignment]  # dict semantics: mutable container, unhashable

    # -- semantics ---------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.sliding_window_size is not None

    def is_sliding_layer(self, layer_idx: int) -> bool:
        return self.enabled and layer_idx not in self.non_sliding_layers

    def full_on_decode(self, layer_idx: int) -> bool:
        """Whether decode steps (and answer tokens in training) attend fully on this layer."""
        fad = self.force_fa_decode
        return fad if isinstance(fad, bool) else layer_idx in fad

    def check_layers(self, num_layers: int) -> None:
        """Raise if a layer index does not exist in a model with ``num_layers`` layers."""
        for name in ("non_sliding_layers", "force_fa_decode"):
            value = getattr(self, name)
            if isinstance(value, bool):
                continue
            bad = [i for i in value if i >= num_layers]
            if bad:
                raise ValueError(
                    f"{name}: layer indices must be in [0, {num_layers - 1}] for this model "
                    f"({num_layers} layers), got {bad}"
                )

    def run_name(self) -> str:
        """A short, readable, filesystem-safe name, e.g. ``swa2048_sink100_fad_full1-3-5``."""
        if not self.enabled:
            return "full"
        parts = [f"swa{self.sliding_window_size}"]
        if self.keep_first:
            parts.append(f"sink{self.keep_first}")
        fad = self.force_fa_decode
        if fad is True:
            parts.append("fad")
        elif fad:
            parts.append("fad" + "-".join(map(str, fad)))
        if self.non_sliding_layers:
            parts.append("full" + "-".join(map(str, self.non_sliding_layers)))
        return "_".join(parts)
