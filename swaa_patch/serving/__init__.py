"""SWAA under transformers' continuous batching (``generate_batch``, ``transformers serve``).

The engine packs every scheduled request into one batch-1 forward: each request contributes its
new tokens (a prompt chunk or one generated token), ``position_ids`` restart per request, and the
paged cache hands attention each request's cached keys followed by its new ones. Three modules
make SWAA exact there:

- ``plan.py``: :class:`PackedPlan`, the rule's inputs for one packed forward (per-row position,
  request and whether the row is a generated token; per-key position and request for each cache
  layout), built from the packed arguments and what the engine scheduled;
- ``paged_cache.py``: the sink + ring layout of the paged cache for sliding layers without
  ``force_fa_decode`` (``keep_first`` fixed sink slots and a ring of W slots per request), and the
  view of the model config the engine sizes its cache from;
- ``engine.py``: everything that depends on the installed engine (the two places SWAA hooks it,
  the names of its arguments, who updates the cache), checked against the installed release.

The kernel that applies the rule on the packed layout is ``backends/packed.py``.
"""
