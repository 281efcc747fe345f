"""CLEVR's object vocabulary and attribute conjunctions ("rubber green sphere").

An object is a point in the product space shape x color x material x size (3 x 8 x 2 x 2 = 96
combinations). A conjunction fixes some of those attributes; an object matches it when it agrees
on every fixed one.
"""
from __future__ import annotations

import itertools
from typing import Mapping

SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder")

# CLEVR's sRGB colors (properties.json of the original generator).
COLORS: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}

MATERIALS: tuple[str, ...] = ("rubber", "metal")

# CLEVR's size radius r; a cube's half-size is r / sqrt(2) (so it is as tall as it is wide
# while not looming larger than a sphere of the same size class).
SIZES: dict[str, float] = {"large": 0.7, "small": 0.35}

# Attribute name -> allowed values, in a fixed order (labels.csv columns follow it).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "material": MATERIALS,
    "size": tuple(SIZES),
}

# Synonyms users type, mapped to the canonical words (CLEVR's question templates use them too).
SYNONYMS: dict[str, str] = {
    "cubes": "cube", "block": "cube", "spheres": "sphere", "ball": "sphere",
    "cylinders": "cylinder", "grey": "gray", "matte": "rubber",
    "metallic": "metal", "shiny": "metal", "big": "large", "tiny": "small",
}

# word -> attribute name, e.g. "green" -> "color".
_ATTRIBUTE_OF: dict[str, str] = {v: a for a, values in ATTRIBUTES.items() for v in values}

def parse_conjunction(text: str | Mapping[str, str], what: str = "conjunction") -> dict[str, str]:
    """Parse "rubber green sphere" (or a mapping) into {"material": ..., "color": ..., "shape": ...}.

    Raises ValueError naming the bad word and the allowed ones.
    """
    if isinstance(text, Mapping):
        words = []
        for attr, value in text.items():
            if attr not in ATTRIBUTES:
                raise ValueError(
                    f"{what}: unknown attribute {attr!r}; allowed: {', '.join(ATTRIBUTES)}")
            words.append(value)
    else:
        words = str(text).replace(",", " ").split()
    if not words:
        raise ValueError(f"{what} is empty; give one to four attribute words, e.g. "
                         f"'rubber green sphere'")
    out: dict[str, str] = {}
    for raw in words:
        word = SYNONYMS.get(raw.lower(), raw.lower())
        attr = _ATTRIBUTE_OF.get(word)
        if attr is None:
            allowed = "; ".join(f"{a}: {', '.join(v)}" for a, v in ATTRIBUTES.items())
            raise ValueError(f"{what}: unknown attribute value {raw!r}; allowed values are "
                             f"{allowed}")
        if attr in out and out[attr] != word:
            raise ValueError(f"{what}: gives two values for {attr} ({out[attr]!r} and "
                             f"{word!r}); an object has one {attr}")
        out[attr] = word
    # Canonical order, so equal conjunctions compare and serialise equal.
    return {a: out[a] for a in ATTRIBUTES if a in out}


def describe(conjunction: Mapping[str, str]) -> str:
    """{"material": "rubber", "color": "green", "shape": "sphere"} -> "small rubber green sphere"
    style text in CLEVR's word order (size material color shape)."""
    order = ("size", "material", "color", "shape")
    return " ".join(conjunction[a] for a in order if a in conjunction)


def matches(obj: Mapping[str, str], conjunction: Mapping[str, str]) -> bool:
    """True if the object agrees with every attribute the conjunction fixes."""
    return all(obj[a] == v for a, v in conjunction.items())


def all_combinations() -> list[dict[str, str]]:
    """Every object type, as attribute dicts, in a fixed order."""
    names = list(ATTRIBUTES)
    return [dict(zip(names, values)) for values in itertools.product(*ATTRIBUTES.values())]



# Every object type, in all_combinations() order.
OBJECT_TYPES: tuple[dict[str, str], ...] = tuple(all_combinations())
