"""Weighted split: relative weights, single-cluster short cut, and convergence of pick frequencies."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.model import SplitEntryConfig
from proxy.routing.split import Split


class NoDraws(random.Random):
    """A Random that fails the test if anything draws from it."""

    def random(self) -> float:
        raise AssertionError("a single-cluster split must not draw")


def entries(*pairs: tuple[str, int]) -> list[SplitEntryConfig]:
    return [SplitEntryConfig(cluster=c, weight=w) for c, w in pairs]


def test_single_cluster_needs_no_draw() -> None:
    split = Split.from_config("a", None)
    assert split.pick(NoDraws()) == "a"
    assert split.names == ("a",)


def test_split_of_one_needs_no_draw() -> None:
    assert Split.from_config(None, entries(("a", 7))).pick(NoDraws()) == "a"
    assert Split.from_config(None, entries(("a", 7), ("a", 3))).pick(NoDraws()) == "a"


def test_weights_and_names() -> None:
    split = Split.from_config(None, entries(("v1", 90), ("v2", 10), ("v1", 5)))
    assert split.weights == (("v1", 90), ("v2", 10), ("v1", 5))
    assert split.names == ("v1", "v2")


@pytest.mark.parametrize(
    ("cluster", "split"),
    [(None, None), ("a", entries(("b", 1))), (None, [])],
)
def test_bad_targets_are_refused(cluster: str | None, split: list[SplitEntryConfig] | None) -> None:
    with pytest.raises(ValueError):
        Split.from_config(cluster, split)


def test_non_positive_weight_refused() -> None:
    with pytest.raises(ValueError):
        Split([("a", 1), ("b", 0)])


class Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("draw", "expected"),
    [(0.0, "a"), (0.8999, "a"), (0.9, "b"), (0.9999999999999999, "b"), (1.0, "b")],
)
def test_boundaries(draw: float, expected: str) -> None:
    # 1.0 never comes from random(), but must still land on a valid cluster.
    assert Split([("a", 90), ("b", 10)]).pick(Fixed(draw)) == expected


def test_same_seed_same_sequence() -> None:
    split = Split([("a", 1), ("b", 1), ("c", 1)])
    rng1, rng2 = random.Random(42), random.Random(42)
    assert [split.pick(rng1) for _ in range(100)] == [split.pick(rng2) for _ in range(100)]


@settings(max_examples=30, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=100), min_size=2, max_size=5),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_frequencies_converge_to_weights(weights: list[int], seed: int) -> None:
    split = Split([(f"c{i}", w) for i, w in enumerate(weights)])
    rng = random.Random(seed)
    draws = 20_000
    counts = Counter(split.pick(rng) for _ in range(draws))
    total = sum(weights)
    chi2 = 0.0
    for i, weight in enumerate(weights):
        expected = draws * weight / total
        chi2 += (counts[f"c{i}"] - expected) ** 2 / expected
    # Chi-square with k-1 <= 4 degrees of freedom: 30 is far beyond the 0.9999 quantile (~23.5 at 4 dof),
    # so a correct picker essentially never fails while one that mixes up weights or clusters does.
    assert chi2 < 30, (weights, dict(counts), chi2)
