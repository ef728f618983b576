"""Synthetic long-context task families (RULER-style), one small draw function per family.

A family only decides *what* to hide and ask (:class:`Draw`); :mod:`swaa_patch.data.sizing`
hides it in real stdlib text at the requested depth and sizes the prompt in tokens. Every
random choice comes from a ``random.Random`` seeded with a string, so a (task, length, depth,
seed, index) tuple always gives the same sample.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

NAMES = (
    "Alice", "Bruno", "Chiara", "Dmitri", "Esther", "Farid", "Greta", "Hiro", "Ingrid", "Jonas",
    "Kalani", "Lucia", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sanjay", "Tamsin",
)
OBJECTS = (
    "brass compass", "violin", "spare key", "passport", "chess set", "umbrella", "telescope",
    "sketchbook", "lantern", "typewriter", "teapot", "kite", "microscope", "harmonica",
)
PLACES = (
    "attic", "garden shed", "blue suitcase", "kitchen drawer", "bank vault", "glovebox",
    "bookshelf", "wine cellar", "piano bench", "tool chest", "greenhouse", "hall closet",
)
KEY_WORDS = (
    "amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor", "indigo", "juniper",
    "kestrel", "lichen", "magma", "nimbus", "obsidian", "pumice", "quartz", "raven", "saffron",
    "tundra", "umber", "vortex", "willow", "yarrow", "zephyr",
)
LETTERS = "ABCD"


@dataclass(frozen=True)
class Needle:
    """A sentence hidden in the haystack at a relative depth in [0, 1]."""

    text: str
    depth: float


@dataclass(frozen=True)
class Draw:
    """What one sample hides and asks. ``answer`` is a list when every item is required."""

    needles: tuple[Needle, ...]
    question: str
    answer: str | list[str]


@dataclass(frozen=True)
class TaskFamily:
    name: str
    draw: Callable[[random.Random, float], Draw]
    scoring: str
    description: str


def _scatter(rng: random.Random, count: int, low: float = 0.0) -> list[float]:
    return [round(rng.uniform(low, 1.0), 4) for _ in range(count)]


def draw_passkey(rng: random.Random, depth: float) -> Draw:
    key = str(rng.randint(100000, 999999))
    needle = Needle(f"The pass key is {key}. Remember it. {key} is the pass key.", depth)
    return Draw((needle,), "What is the pass key? Answer with the number only.", key)


def draw_multikey_niah(rng: random.Random, depth: float, num_keys: int = 4) -> Draw:
    keys = rng.sample(KEY_WORDS, num_keys)
    values = [str(rng.randint(1000000, 9999999)) for _ in keys]
    depths = [depth, *_scatter(rng, num_keys - 1)]
    needles = tuple(
        Needle(f"One of the special magic numbers for {k} is: {v}.", d)
        for k, v, d in zip(keys, values, depths)
    )
    question = f"What is the special magic number for {keys[0]}? Answer with the number only."
    return Draw(needles, question, values[0])


def draw_multivalue(rng: random.Random, depth: float, num_values: int = 4) -> Draw:
    key = rng.choice(KEY_WORDS)
    values = [str(v) for v in rng.sample(range(1000000, 9999999), num_values)]
    depths = [depth, *_scatter(rng, num_values - 1)]
    needles = tuple(
        Needle(f"One of the special magic numbers for {key} is: {v}.", d) for v, d in zip(values, depths)
    )
    question = f"What are all the special magic numbers for {key}? List every one of them."
    return Draw(needles, question, values)


def draw_kv_lookup(rng: random.Random, depth: float, num_pairs: int = 8) -> Draw:
    keys = [f"{rng.getrandbits(32):08x}" for _ in range(num_pairs)]
    values = [f"{rng.getrandbits(32):08x}" for _ in range(num_pairs)]
    depths = [depth, *_scatter(rng, num_pairs - 1)]
    needles = tuple(
        Needle(f"The value stored under key {k} is {v}.", d) for k, v, d in zip(keys, values, depths)
    )
    question = f"What is the value stored under key {keys[0]}? Answer with the value only."
    return Draw(needles, question, values[0])


def _variable_names(rng: random.Random, count: int) -> list[str]:
    names: list[str] = []  # a list, not a set: set order depends on PYTHONHASHSEED
    while len(names) < count:
        name = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(5))
        if name not in names:
            names.append(name)
    return names


def _chain(names: list[str], value: str, depths: list[float]) -> list[Needle]:
    statements = [f"VAR {names[0]} = {value}."]
    statements += [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    return [Needle(s, d) for s, d in zip(statements, sorted(depths))]


def draw_variable_tracking(rng: random.Random, depth: float, hops: int = 3) -> Draw:
    """Multi-hop: a value is passed along a chain of assignments; a second chain distracts."""
    names = _variable_names(rng, 2 * (hops + 1))
    value, other = (str(v) for v in rng.sample(range(10000, 99999), 2))
    target = _chain(names[: hops + 1], value, [depth, *_scatter(rng, hops, low=depth)])
    distractor = _chain(names[hops + 1 :], other, _scatter(rng, hops + 1))
    question = (
        f"Which variables are assigned the value {value}, directly or through other variables? "
        "List all of them."
    )
    return Draw(tuple(target + distractor), question, names[: hops + 1])


def draw_depth_qa(rng: random.Random, depth: float, num_distractors: int = 2) -> Draw:
    """Multiple choice (LongBench-v2 style): one fact at ``depth``, similar facts elsewhere."""
    people = rng.sample(NAMES, num_distractors + 1)
    objects = rng.sample(OBJECTS, num_distractors + 1)
    places = rng.sample(PLACES, 4)
    facts = [f"{people[0]} keeps the {objects[0]} in the {places[0]}."]
    facts += [f"{p} keeps the {o} in the {rng.choice(places[1:])}." for p, o in zip(people[1:], objects[1:])]
    needles = tuple(Needle(f, d) for f, d in zip(facts, [depth, *_scatter(rng, num_distractors)]))
    options = places[:]
    rng.shuffle(options)
    letter = LETTERS[options.index(places[0])]
    lines = [f"Where does {people[0]} keep the {objects[0]}?"]
    lines += [f"({x}) {o}" for x, o in zip(LETTERS, options)]
    lines.append('Reply in the format "The correct answer is (X)".')
    return Draw(needles, "\n".join(lines), letter)


TASKS: dict[str, TaskFamily] = {
    family.name: family
    for family in (
        TaskFamily("passkey", draw_passkey, "numeric", "one pass key hidden once"),
        TaskFamily("multikey_niah", draw_multikey_niah, "numeric", "4 keyed needles, ask one"),
        TaskFamily("multivalue", draw_multivalue, "contains_all", "one key, 4 values, ask all"),
        TaskFamily("kv_lookup", draw_kv_lookup, "contains", "8 hex key-value records, ask one"),
        TaskFamily("variable_tracking", draw_variable_tracking, "contains_all", "3-hop assignment chain"),
        TaskFamily("depth_qa", draw_depth_qa, "choice", "4-way multiple choice, evidence at depth"),
    )
}
