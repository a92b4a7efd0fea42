"""The world of the synthetic web: visual concepts, each a shape x colour x texture combination.

Concepts carry invented names (so no pretrained text model knows them) and follow a Zipf law, like the long
tail of real web tags. The world also holds the pools of meta tags and noise words the corpus draws junk from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "ring",
    "hexagon", "diamond", "crescent", "arrow", "pentagon", "ellipse",
)  # fmt: skip

# Far apart in RGB so JPEG, jitter and shading never make two of them look alike.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (250, 140, 15),
    "yellow": (245, 225, 30),
    "green": (35, 150, 50),
    "cyan": (40, 210, 225),
    "blue": (30, 60, 210),
    "purple": (130, 40, 185),
    "pink": (250, 130, 200),
    "brown": (115, 65, 25),
    "white": (248, 248, 248),
    "black": (20, 20, 20),
}

TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")

ATTRIBUTE_WORDS: frozenset[str] = frozenset(SHAPES) | frozenset(COLOURS) | frozenset(TEXTURES)

# YFCC100M / Flickr-style metadata tags: true of the photo, useless for its content.
META_TAGS: tuple[str, ...] = (
    "nikon d90", "nikon d7000", "nikon d300", "canon eos", "canon eos 5d", "canon 550d", "canon powershot",
    "sony alpha", "sony nex", "olympus", "pentax", "fujifilm", "panasonic lumix", "iphone", "iphone 4",
    "iphone 4s", "samsung galaxy", "instagram", "hipstamatic", "2009", "2010", "2011", "2012", "2013", "2014",
    "london", "paris", "new york", "tokyo", "berlin", "barcelona", "california", "san francisco", "texas",
    "italy", "spain", "france", "germany", "japan", "canada", "australia", "england", "vacation", "holiday",
    "travel", "trip", "flickr", "geotagged", "uploaded:by=flickrmobile", "flickriosapp", "square format",
    "hdr", "bokeh", "50mm", "35mm", "f1.8", "dslr", "raw", "lightroom", "explore",
)  # fmt: skip

# Common web words for the noise pool; the rest of the pool is pseudo-words.
_COMMON_WORDS: tuple[str, ...] = (
    "love", "friends", "family", "party", "summer", "winter", "spring", "autumn", "beach", "sky", "clouds",
    "sunset", "sunrise", "city", "street", "night", "food", "dog", "cat", "baby", "wedding", "music", "art",
    "photo", "nature", "water", "tree", "flowers", "macro", "portrait", "selfie", "fun", "happy", "cute",
    "girl", "boy", "me", "birthday", "christmas", "home", "garden", "park", "lake", "river", "mountain",
    "snow", "rain", "car", "bike", "train", "bridge", "building", "architecture", "church", "museum",
    "concert", "festival", "kids", "school", "work", "office", "coffee", "dinner", "lunch", "breakfast",
    "cake", "beer", "wine", "old", "new", "light", "dark", "shadow", "reflection", "window", "door", "wall",
    "graffiti", "sign", "people", "crowd", "smile", "eyes", "hair", "hands", "blur", "film", "analog",
    "vintage", "urban", "rural", "road", "sea", "ocean", "island", "sand", "forest", "leaves", "grass",
    "bird", "horse", "zoo", "sport", "football", "game", "team", "race", "dance", "show", "stage", "random",
    "untitled", "test", "misc", "stuff", "mine", "best", "awesome", "nice", "pretty", "beautiful",
    "amazing", "wow",
)  # fmt: skip

NOISE_POOL_SIZE = 300

# Syllable parts for pronounceable pseudo-words like "zorvik" or "bralunes".
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr",
           "sh", "th", "ch", "pl", "st")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "a", "o", "ai", "ou", "ei")
_CODAS = ("", "", "", "n", "r", "k", "l", "s", "x", "m", "nd", "rk")


def _pseudo_word(rng: np.random.Generator) -> str:
    n = 2 if rng.random() < 0.7 else 3  # syllables
    parts = [_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(n)]
    return "".join(parts) + _CODAS[rng.integers(len(_CODAS))]


def _fresh_words(rng: np.random.Generator, count: int, taken: set[str]) -> list[str]:
    """`count` new pseudo-words, none already in `taken` (which is updated)."""
    words: list[str] = []
    while len(words) < count:
        word = _pseudo_word(rng)
        if len(word) >= 4 and word not in taken:
            taken.add(word)
            words.append(word)
    return words


@dataclass(frozen=True)
class Concept:
    index: int
    name: str
    synonyms: tuple[str, ...]
    shape: str
    colour: str
    texture: str

    @property
    def attributes(self) -> tuple[str, str, str]:
        return (self.colour, self.shape, self.texture)


@dataclass(eq=False)
class World:
    concepts: list[Concept]
    frequencies: np.ndarray  # probability of each concept being drawn for an object; sums to 1
    meta_tags: list[str]
    noise_words: list[str]
    _by_name: dict[str, Concept] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name = {word: c for c in self.concepts for word in (c.name, *c.synonyms)}

    def __eq__(self, other: object) -> bool:  # by value; the generated __eq__ chokes on the ndarray field
        if not isinstance(other, World):
            return NotImplemented
        fields = ("concepts", "meta_tags", "noise_words")
        same = all(getattr(self, name) == getattr(other, name) for name in fields)
        return same and np.array_equal(self.frequencies, other.frequencies)

    @property
    def num_concepts(self) -> int:
        return len(self.concepts)

    def concept_by_name(self, name: str) -> Concept:
        """The concept called `name` (its name or one of its synonyms)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no concept is called {name!r}") from None


def _pick_combinations(num: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Greedy, seeded choice of distinct (shape, colour, texture) index triples.

    Each pick minimises the load of its three attributes (so every shape, colour and texture recurs evenly)
    and, among equals, prefers a combination differing from an earlier concept in one attribute only: that
    makes "same shape and colour, other texture" confusions exist, so a model has to see all three attributes.
    """
    dims = (len(SHAPES), len(COLOURS), len(TEXTURES))
    grid = np.stack(np.meshgrid(*[np.arange(d) for d in dims], indexing="ij"), -1).reshape(-1, 3)
    grid = grid[rng.permutation(len(grid))]
    counts = [np.zeros(d) for d in dims]
    free = np.ones(len(grid), dtype=bool)
    has_twin = np.zeros(len(grid), dtype=bool)  # differs from a chosen combination in exactly one attribute
    chosen: list[tuple[int, int, int]] = []
    for _ in range(num):
        load = sum(counts[a][grid[:, a]] * dims[a] / num for a in range(3)) - 0.05 * has_twin
        load[~free] = np.inf
        pick = int(np.argmin(load))  # ties go to the earliest in the seeded order
        free[pick] = False
        has_twin |= (grid == grid[pick]).sum(1) == 2
        chosen.append(tuple(int(i) for i in grid[pick]))
        for a in range(3):
            counts[a][grid[pick, a]] += 1
    return chosen


def make_world(num_concepts: int, seed: int, zipf: float = 1.0) -> World:
    """A deterministic world of `num_concepts` distinct concepts with Zipf(`zipf`) frequencies."""
    limit = len(SHAPES) * len(COLOURS) * len(TEXTURES)
    if not 1 <= num_concepts <= limit:
        raise ValueError(
            f"num_concepts={num_concepts} is impossible: there are only {limit} shape x colour x texture "
            f"combinations ({len(SHAPES)} shapes, {len(COLOURS)} colours, {len(TEXTURES)} textures); "
            f"use 1..{limit}"
        )
    rng = np.random.default_rng([seed, 0x5EB])
    colour_names = list(COLOURS)
    meta_words = {w for tag in META_TAGS for w in (tag, *tag.split())}
    taken = set(ATTRIBUTE_WORDS) | set(_COMMON_WORDS) | meta_words

    concepts = []
    for index, (s, c, t) in enumerate(_pick_combinations(num_concepts, rng)):
        name, *synonyms = _fresh_words(rng, 1 + int(rng.integers(1, 3)), taken)
        concepts.append(Concept(index, name, tuple(synonyms), SHAPES[s], colour_names[c], TEXTURES[t]))

    # Zipf over a seeded rank order, so the head concepts are a random mix of attributes.
    ranks = rng.permutation(num_concepts) + 1
    weights = 1.0 / ranks.astype(np.float64) ** zipf
    frequencies = weights / weights.sum()

    common = [w for w in _COMMON_WORDS if w not in ATTRIBUTE_WORDS and w not in meta_words]
    noise = common + _fresh_words(rng, NOISE_POOL_SIZE - len(common), taken)
    noise = [noise[i] for i in rng.permutation(len(noise))]  # the seeded order is the noise words' Zipf rank
    return World(concepts, frequencies, list(META_TAGS), noise)
