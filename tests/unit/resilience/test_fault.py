"""Fault injection: compile (None when nothing can fire), 0 % and 100 %, independent draws whose frequencies
converge to the configured percentages (seeded rng), and allocation-free decisions."""

from __future__ import annotations

import random

import pytest

from proxy.config.model import FaultConfig
from proxy.resilience.fault import NO_FAULT, FaultDecision, FaultInjector


class NoDraws(random.Random):
    """A Random that fails the test if anything draws from it."""

    def random(self) -> float:
        raise AssertionError("no draw expected")


def fault(delay: tuple[str, float] | None = None, abort: tuple[int, float] | None = None) -> FaultConfig:
    data: dict[str, object] = {}
    if delay is not None:
        data["delay"] = {"fixed": delay[0], "percent": delay[1]}
    if abort is not None:
        data["abort"] = {"status": abort[0], "percent": abort[1]}
    return FaultConfig.model_validate(data)


@pytest.mark.parametrize("config", [
    None, fault(), fault(delay=("2s", 0)), fault(abort=(503, 0)), fault(delay=("2s", 0), abort=(503, 0)),
    fault(delay=("0s", 50))])
def test_nothing_to_inject_compiles_to_none(config: FaultConfig | None) -> None:
    assert FaultInjector.from_config(config, random.Random(0)) is None


def test_always_and_never_need_no_draw() -> None:
    injector = FaultInjector.from_config(fault(delay=("2s", 100), abort=(503, 0)), NoDraws())
    assert injector is not None
    assert injector.decide() == FaultDecision(delay=2.0, abort=None)
    injector = FaultInjector.from_config(fault(delay=("2s", 0), abort=(418, 100)), NoDraws())
    assert injector is not None
    assert injector.decide() == FaultDecision(delay=0.0, abort=418)
    injector = FaultInjector.from_config(fault(delay=("250ms", 100), abort=(503, 100)), NoDraws())
    assert injector is not None
    decision = injector.decide()
    assert (decision.delay, decision.abort, decision.injected) == (0.25, 503, True)


def test_no_fault_value() -> None:
    assert FaultDecision() == NO_FAULT
    assert not NO_FAULT.injected
    assert (NO_FAULT.delay, NO_FAULT.abort) == (0.0, None)


def test_probabilities() -> None:
    injector = FaultInjector.from_config(fault(delay=("1s", 12.5), abort=(500, 0.1)), random.Random(0))
    assert injector is not None
    assert injector.delay_probability == pytest.approx(0.125)
    assert injector.abort_probability == pytest.approx(0.001)


@pytest.mark.parametrize(("delay_percent", "abort_percent"), [(10.0, 5.0), (50.0, 50.0), (0.5, 99.5), (33.3, 0.0)])
def test_frequencies_converge_and_draws_are_independent(delay_percent: float, abort_percent: float) -> None:
    injector = FaultInjector.from_config(fault(delay=("2s", delay_percent), abort=(503, abort_percent)),
                                         random.Random(1234))
    assert injector is not None
    n = 100_000
    delayed = aborted = both = 0
    for _ in range(n):
        decision = injector.decide()
        is_delayed = decision.delay > 0
        is_aborted = decision.abort is not None
        delayed += is_delayed
        aborted += is_aborted
        both += is_delayed and is_aborted
        if is_delayed:
            assert decision.delay == 2.0
        if is_aborted:
            assert decision.abort == 503
    p_delay, p_abort = delay_percent / 100, abort_percent / 100

    def close(count: int, p: float) -> None:
        # Five standard deviations of a binomial count: a seeded run never flakes, a wrong rate is caught.
        tolerance = 5 * (n * p * (1 - p)) ** 0.5 + 1
        assert abs(count - n * p) <= tolerance, (count, n * p, tolerance)

    close(delayed, p_delay)
    close(aborted, p_abort)
    close(both, p_delay * p_abort)


def test_seeded_runs_are_repeatable() -> None:
    config = fault(delay=("1s", 30), abort=(503, 30))

    def run(seed: int) -> list[FaultDecision]:
        injector = FaultInjector.from_config(config, random.Random(seed))
        assert injector is not None
        return [injector.decide() for _ in range(200)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_decisions_are_shared_values() -> None:
    injector = FaultInjector.from_config(fault(delay=("1s", 50), abort=(503, 50)), random.Random(3))
    assert injector is not None
    distinct = {id(injector.decide()) for _ in range(1000)}
    assert len(distinct) == 4


def test_abort_only_draws_once_per_request() -> None:
    class Counting(random.Random):
        draws = 0

        def random(self) -> float:
            Counting.draws += 1
            return super().random()

    injector = FaultInjector.from_config(fault(abort=(503, 20)), Counting(0))
    assert injector is not None
    for _ in range(100):
        injector.decide()
    assert Counting.draws == 100


@pytest.mark.parametrize("args", [(-1.0, 10.0, None, 0.0), (1.0, 101.0, None, 0.0), (1.0, 10.0, 503, -1.0)])
def test_bad_settings(args: tuple[float, float, int | None, float]) -> None:
    with pytest.raises(ValueError):
        FaultInjector(*args, rng=random.Random(0))
