"""Outlier detection core: counting, ejection on the timer, max ejection percent (at least one), re-admission,
multiplier growth, cap and decay, endpoint-set changes. Pure: every time is a number passed in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.model import OutlierDetectionConfig
from proxy.upstream.outlier import OutlierChange, OutlierDetector


def endpoints(count: int) -> list[str]:
    return [f"10.0.0.{index}:8080" for index in range(1, count + 1)]


def detector(count: int = 10, **overrides: float) -> OutlierDetector:
    settings_: dict[str, float] = {"consecutive_5xx": 5, "interval": 10.0, "base_ejection_time": 30.0,
                                   "max_ejection_percent": 10.0}
    settings_.update(overrides)
    od = OutlierDetector(int(settings_.pop("consecutive_5xx")), **settings_)
    od.set_endpoints(endpoints(count))
    return od


def fail(od: OutlierDetector, key: str, times: int = 5) -> None:
    for _ in range(times):
        od.record(key, True)


A, B, C = "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"


def test_from_config_defaults() -> None:
    od = OutlierDetector.from_config(OutlierDetectionConfig(), [A, B])
    assert od.interval == 10.0
    fail(od, A, 4)
    assert od.evaluate(0.0) == []
    od.record(A, True)
    assert od.evaluate(10.0) == [OutlierChange(A, True, 30.0)]


def test_below_threshold_is_not_ejected_and_success_resets() -> None:
    od = detector()
    fail(od, A, 4)
    od.record(A, False)
    fail(od, A, 4)
    assert od.evaluate(10.0) == []
    assert not od.is_ejected(A)
    assert od.snapshot()[A]["consecutive_5xx"] == 4


def test_ejection_is_decided_by_the_timer_not_the_request() -> None:
    od = detector()
    fail(od, A, 7)
    assert not od.is_ejected(A)
    assert od.evaluate(10.0) == [OutlierChange(A, True, 30.0)]
    assert od.is_ejected(A)
    assert od.ejected == frozenset({A})
    assert od.ejections_total == 1
    snap = od.snapshot()[A]
    assert snap == {"ejected": True, "consecutive_5xx": 0, "times_ejected": 1, "ejection_seconds": 30.0}


def test_readmitted_after_ejection_time() -> None:
    od = detector()
    fail(od, A)
    od.evaluate(10.0)
    assert od.evaluate(20.0) == []
    assert od.evaluate(39.9) == []
    assert od.is_ejected(A)
    assert od.evaluate(40.0) == [OutlierChange(A, False)]
    assert not od.is_ejected(A)
    # Back with a clean count: one more failure is not enough to go out again.
    od.record(A, True)
    assert od.evaluate(50.0) == []


def test_failures_recorded_while_ejected_do_not_carry_over() -> None:
    od = detector()
    fail(od, A)
    od.evaluate(0.0)
    fail(od, A, 10)  # in-flight requests finishing after the ejection
    assert od.evaluate(30.0) == [OutlierChange(A, False)]
    assert od.evaluate(40.0) == []


def test_multiplier_grows_with_each_ejection() -> None:
    od = detector()
    now = 0.0
    durations = []
    for _ in range(4):
        fail(od, A)
        (change,) = od.evaluate(now)
        assert change.ejected
        durations.append(change.duration)
        now += change.duration
        assert od.evaluate(now) == [OutlierChange(A, False)]
    assert durations == [30.0, 60.0, 90.0, 120.0]


def test_ejection_time_capped_at_max_ejection_time() -> None:
    od = detector(base_ejection_time=100.0)
    now = 0.0
    durations = []
    for _ in range(6):
        fail(od, A)
        (change,) = od.evaluate(now)
        durations.append(change.duration)
        now += change.duration
        od.evaluate(now)
    assert durations == [100.0, 200.0, 300.0, 300.0, 300.0, 300.0]
    # The multiplier stopped growing once the cap was reached.
    assert od.snapshot()[A]["times_ejected"] == 3


def test_cap_is_base_when_base_exceeds_default() -> None:
    od = detector(base_ejection_time=400.0)
    fail(od, A)
    (first,) = od.evaluate(0.0)
    od.evaluate(400.0)
    fail(od, A)
    (second,) = od.evaluate(400.0)
    assert (first.duration, second.duration) == (400.0, 400.0)


def test_explicit_max_ejection_time() -> None:
    od = detector(base_ejection_time=10.0, max_ejection_time=25.0)
    durations = []
    now = 0.0
    for _ in range(4):
        fail(od, A)
        (change,) = od.evaluate(now)
        durations.append(change.duration)
        now += change.duration
        od.evaluate(now)
    assert durations == [10.0, 20.0, 25.0, 25.0]


def test_multiplier_decays_one_step_per_healthy_interval() -> None:
    od = detector()
    now = 0.0
    for _ in range(3):  # multiplier 3
        fail(od, A)
        (change,) = od.evaluate(now)
        now += change.duration
        od.evaluate(now)  # re-admitted at `now`
    readmitted = now
    assert od.snapshot()[A]["times_ejected"] == 3
    od.evaluate(readmitted + 9.9)
    assert od.snapshot()[A]["times_ejected"] == 3
    od.evaluate(readmitted + 10.0)
    assert od.snapshot()[A]["times_ejected"] == 2
    # Sweeping more often than the interval does not speed the decay up.
    for step in range(1, 10):
        od.evaluate(readmitted + 10.0 + step)
    assert od.snapshot()[A]["times_ejected"] == 2
    od.evaluate(readmitted + 20.0)
    assert od.snapshot()[A]["times_ejected"] == 1
    # A late sweep catches up.
    od.evaluate(readmitted + 95.0)
    assert od.snapshot()[A]["times_ejected"] == 0
    fail(od, A)
    (change,) = od.evaluate(readmitted + 100.0)
    assert change.duration == 30.0


def test_partial_decay_shortens_the_next_ejection() -> None:
    od = detector()
    now = 0.0
    for _ in range(3):
        fail(od, A)
        (change,) = od.evaluate(now)
        now += change.duration
        od.evaluate(now)
    od.evaluate(now + 10.0)  # 3 -> 2
    fail(od, A)
    (change,) = od.evaluate(now + 15.0)
    assert change.duration == 90.0  # multiplier back to 3


@pytest.mark.parametrize(("count", "percent", "allowed"), [
    (10, 10, 1), (20, 10, 2), (3, 10, 1), (1, 10, 1), (15, 10, 1), (10, 50, 5), (10, 100, 10), (7, 30, 2),
    (10, 0, 0), (0, 10, 0)])
def test_max_ejected(count: int, percent: float, allowed: int) -> None:
    assert detector(count, max_ejection_percent=percent).max_ejected() == allowed


def test_max_ejection_percent_limits_simultaneous_ejections() -> None:
    od = detector(20, max_ejection_percent=10)
    keys = endpoints(20)
    for key in keys[:5]:
        fail(od, key)
    changes = od.evaluate(10.0)
    assert len(changes) == 2
    assert len(od.ejected) == 2
    assert od.ejections_overflow == 3


def test_at_least_one_is_ejected_in_a_small_cluster() -> None:
    od = detector(3, max_ejection_percent=10)
    fail(od, A)
    fail(od, B)
    assert od.evaluate(0.0) == [OutlierChange(A, True, 30.0)]
    assert od.ejected == frozenset({A})


def test_zero_percent_never_ejects() -> None:
    od = detector(3, max_ejection_percent=0)
    fail(od, A, 50)
    assert od.evaluate(0.0) == []
    assert not od.is_ejected(A)
    assert od.ejections_overflow == 1


def test_refused_candidate_is_ejected_when_room_frees() -> None:
    od = detector(3, max_ejection_percent=10)
    fail(od, A)
    od.evaluate(0.0)
    fail(od, B)
    assert od.evaluate(10.0) == []  # no room: A is out
    assert od.snapshot()[B]["consecutive_5xx"] == 5
    # A returns and B goes out in the same sweep: re-admissions are applied first.
    assert od.evaluate(30.0) == [OutlierChange(A, False), OutlierChange(B, True, 30.0)]


def test_longest_failure_run_goes_first() -> None:
    od = detector(3, max_ejection_percent=10)
    fail(od, A, 5)
    fail(od, B, 9)
    fail(od, C, 5)
    assert od.evaluate(0.0) == [OutlierChange(B, True, 30.0)]


def test_set_endpoints_keeps_state_of_kept_endpoints() -> None:
    od = detector(3, max_ejection_percent=100)
    fail(od, A)
    od.evaluate(0.0)
    fail(od, B, 3)
    od.set_endpoints([A, B, "10.0.0.9:8080"])
    assert od.is_ejected(A)
    assert od.snapshot()[B]["consecutive_5xx"] == 3
    assert od.snapshot()["10.0.0.9:8080"] == {"ejected": False, "consecutive_5xx": 0, "times_ejected": 0,
                                               "ejection_seconds": 0.0}
    assert set(od.snapshot()) == {A, B, "10.0.0.9:8080"}
    od.record(C, True)  # removed: ignored
    od.set_endpoints([B])
    assert not od.is_ejected(A)
    assert od.ejected == frozenset()
    assert od.evaluate(100.0) == []  # the forgotten ejection produces no re-admission change


def test_removed_ejected_endpoint_frees_room() -> None:
    od = detector(3, max_ejection_percent=10)
    fail(od, A)
    od.evaluate(0.0)
    fail(od, B)
    assert od.evaluate(1.0) == []
    od.set_endpoints([B, C])
    assert od.evaluate(2.0) == [OutlierChange(B, True, 30.0)]


def test_unknown_endpoint_is_ignored() -> None:
    od = detector(1)
    od.record("nowhere:1", True)
    assert not od.is_ejected("nowhere:1")
    assert "nowhere:1" not in od.snapshot()


@pytest.mark.parametrize("kwargs", [
    {"consecutive_5xx": 0}, {"interval": 0.0}, {"base_ejection_time": -1.0}, {"max_ejection_percent": 101.0}])
def test_bad_settings(kwargs: dict[str, float]) -> None:
    args: dict[str, float] = {"consecutive_5xx": 5, "interval": 10.0, "base_ejection_time": 30.0,
                              "max_ejection_percent": 10.0}
    args.update(kwargs)
    with pytest.raises(ValueError):
        OutlierDetector(int(args.pop("consecutive_5xx")), **args)


@settings(max_examples=150, deadline=None)
@given(count=st.integers(1, 12), percent=st.sampled_from([0.0, 10.0, 25.0, 50.0, 100.0]),
       ops=st.lists(st.tuples(st.integers(0, 11), st.booleans(), st.floats(0, 40)), max_size=300))
def test_invariants_under_random_traffic(count: int, percent: float,
                                         ops: list[tuple[int, bool, float]]) -> None:
    od = detector(count, consecutive_5xx=3, max_ejection_percent=percent)
    keys = endpoints(count)
    ejected_since: dict[str, float] = {}
    now = 0.0
    for index, failed, step in ops:
        od.record(keys[index % count], failed)
        if step > 20:
            now += step
            for change in od.evaluate(now):
                if change.ejected:
                    assert change.endpoint not in ejected_since
                    assert 30.0 <= change.duration <= 300.0
                    ejected_since[change.endpoint] = now
                else:
                    # Nobody comes back before the shortest ejection ends.
                    assert now - ejected_since.pop(change.endpoint) >= 30.0
            assert len(od.ejected) <= od.max_ejected()
            assert od.ejected == frozenset(ejected_since)
