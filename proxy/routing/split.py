"""Weighted traffic split: which cluster a route sends one logical request to.

Owns the meaning of `split` weights (relative: 90/10 and 9/1 are the same split) and of a plain
`cluster` (a split of one, decided without a random draw). Weights become cumulative boundaries once, at
compile; `pick` is one draw and one bisect. Must not: hold cluster objects (a route names a cluster, the
upstream manager resolves it), own randomness (the caller passes its injected `random.Random`), or be
called more than once per logical request (retries reuse the cluster picked before the first try).
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Sequence

from proxy.config.model import SplitEntryConfig


class Split:
    """Relative weights compiled into cumulative boundaries; `pick(rng)` returns a cluster name."""

    __slots__ = ("_boundaries", "_clusters", "_single", "_total", "names")

    names: tuple[str, ...]

    def __init__(self, entries: Sequence[tuple[str, int]]) -> None:
        if not entries:
            raise ValueError("a split needs at least one cluster")
        for cluster, weight in entries:
            if weight <= 0:
                raise ValueError(f"split weight for cluster {cluster!r} must be positive (got {weight})")
        self._clusters = tuple(cluster for cluster, _ in entries)
        # Distinct names in first-seen order, for cluster_names() and validation messages.
        self.names = tuple(dict.fromkeys(self._clusters))
        # One distinct cluster (a plain `cluster:`, or a split that only repeats one name) needs no draw.
        self._single: str | None = self.names[0] if len(self.names) == 1 else None
        cumulative: list[int] = []
        total = 0
        for _, weight in entries:
            total += weight
            cumulative.append(total)
        self._total = total
        # The last boundary is dropped: a draw in [0, total) bisected over the inner boundaries always lands
        # on a valid index, even if float rounding ever produced exactly `total`.
        self._boundaries = tuple(cumulative[:-1])

    @classmethod
    def from_config(cls, cluster: str | None, split: Sequence[SplitEntryConfig] | None) -> Split:
        """Compile a route's target: exactly one of `cluster` or a non-empty `split`."""
        if (cluster is None) == (split is None):
            raise ValueError("give exactly one of cluster or split")
        if cluster is not None:
            return cls(((cluster, 1),))
        assert split is not None
        return cls([(entry.cluster, entry.weight) for entry in split])

    @property
    def weights(self) -> tuple[tuple[str, int], ...]:
        """(cluster, weight) per entry, in config order (for config dumps and tests; not the hot path)."""
        previous = 0
        out: list[tuple[str, int]] = []
        for cluster, bound in zip(self._clusters, (*self._boundaries, self._total), strict=True):
            out.append((cluster, bound - previous))
            previous = bound
        return tuple(out)

    def pick(self, rng: random.Random) -> str:
        """The cluster for one logical request. `rng.random()` is used rather than `randrange`, which costs
        several times more; with integer weights below 2**53 the float draw is exact enough."""
        single = self._single
        if single is not None:
            return single
        return self._clusters[bisect_right(self._boundaries, rng.random() * self._total)]

    def __repr__(self) -> str:
        return f"Split({list(self.weights)!r})"
