"""A dict that the cyclic garbage collector keeps tracking, for the big per-trial maps.

CPython untracks a plain dict whose keys and values are all atomic (ints, floats, tuples of
them) at each collection, and tracks it again the moment a new tuple is stored in it: back in
the youngest generation, where every gen-0 collection walks all of its entries again. A study's
indexes are such maps (trial id -> key tuple), 10,000 entries each at 10,000 trials, and that
walk was what was left of the daemon's loop stalls (gen-0 collections of 17-32 ms, bench/scale.py;
with the collector off the longest callback was 5-8 ms). A dict subclass is never untracked:
it ages into the old generation once (or is frozen with the restore) and stays there.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TrackedDict(dict[K, V]):
    """A ``dict`` in every way but one: the collector never untracks it (see the module)."""

    __slots__ = ()
