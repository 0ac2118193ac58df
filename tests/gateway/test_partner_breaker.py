"""The partner call's circuit breaker on a fake clock: it opens on a failure share over a sliding
window after a minimum of calls, lets one trial through after its cool-down, and its settings
refuse values out of range naming the setting."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from cobrand.errors import ConfigError
from cobrand.settings import load_settings
from gateway.partner_breaker import BreakerState, CircuitBreaker
from gateway.settings import BreakerSettings, GatewaySettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: FakeClock, **settings: Any) -> CircuitBreaker:
    chosen: dict[str, Any] = {
        "window_s": 10.0,
        "min_calls": 20,
        "failure_ratio": 0.5,
        "cool_down_s": 5.0,
        **settings,
    }
    return CircuitBreaker(BreakerSettings(**chosen), clock=clock)


def _calls(breaker: CircuitBreaker, outcomes: str) -> None:
    """One allowed call per character: ``s`` succeeded, ``f`` failed."""
    for outcome in outcomes:
        assert breaker.allow()
        if outcome == "s":
            breaker.succeeded()
        else:
            breaker.failed()


def _state(breaker: CircuitBreaker) -> BreakerState:
    # A fresh read each time (mypy would keep an earlier assertion's narrowing of the property).
    return breaker.state


def test_a_burst_of_failures_among_many_successes_below_the_ratio_keeps_it_closed() -> None:
    # As one stall at the partner failing all 32 calls in flight of a busy gateway.
    clock = FakeClock()
    breaker = _breaker(clock)

    for _ in range(9):
        _calls(breaker, "s" * 40)
        clock.now += 1.0
    _calls(breaker, "f" * 32)

    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()


def test_a_sustained_failure_share_at_the_ratio_opens_it_only_after_min_calls() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)

    # Half the calls fail, spread over the window: nothing opens before the twentieth call.
    for _ in range(9):
        _calls(breaker, "sf")
        clock.now += 1.0
    assert breaker.state is BreakerState.CLOSED
    _calls(breaker, "s")
    assert breaker.state is BreakerState.CLOSED
    _calls(breaker, "f")  # 10 of 20 calls failed: 50%

    assert _state(breaker) is BreakerState.OPEN
    assert not breaker.allow()


def test_a_quiet_gateways_few_failures_are_no_evidence_however_large_their_share() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, min_calls=20)

    _calls(breaker, "f" * 19)

    assert breaker.state is BreakerState.CLOSED


def test_failures_that_slid_out_of_the_window_are_forgotten() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)

    _calls(breaker, "f" * 19)
    clock.now += 10.0  # a whole window later
    _calls(breaker, "s" * 19 + "f")  # 1 of the 20 counted calls failed

    assert breaker.state is BreakerState.CLOSED


def test_failures_still_inside_the_window_count() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)

    _calls(breaker, "f" * 19)
    clock.now += 8.0
    _calls(breaker, "f")

    assert breaker.state is BreakerState.OPEN


def test_after_the_cool_down_one_trial_goes_out_and_its_outcome_decides() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, min_calls=2, cool_down_s=10.0)
    _calls(breaker, "ff")
    assert breaker.state is BreakerState.OPEN

    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()  # the trial call
    assert _state(breaker) is BreakerState.HALF_OPEN
    assert not breaker.allow()  # others wait for the trial's outcome
    breaker.failed()
    assert _state(breaker) is BreakerState.OPEN  # for another cool-down
    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
    breaker.succeeded()
    assert _state(breaker) is BreakerState.CLOSED
    # Closed afresh: the failures that opened it are forgotten.
    _calls(breaker, "f")
    assert _state(breaker) is BreakerState.CLOSED


def test_a_half_open_breaker_lets_exactly_one_of_many_threads_through() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, min_calls=1, cool_down_s=1.0)
    _calls(breaker, "f")
    clock.now += 1.0
    start = threading.Barrier(16)

    def attempt(_: int) -> bool:
        start.wait()
        return breaker.allow()

    with ThreadPoolExecutor(16) as pool:
        allowed = list(pool.map(attempt, range(16)))

    assert allowed.count(True) == 1


def test_a_trial_whose_outcome_never_comes_is_replaced_after_a_cool_down() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, min_calls=1, cool_down_s=5.0)
    _calls(breaker, "f")
    clock.now += 5.0
    assert breaker.allow()  # a trial whose caller never reports

    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state is BreakerState.CLOSED


def test_calls_sent_before_it_opened_neither_close_nor_extend_it() -> None:
    # With many calls in flight, some answer after the breaker opened.
    clock = FakeClock()
    breaker = _breaker(clock, min_calls=4, cool_down_s=5.0)
    for _ in range(6):
        assert breaker.allow()
    for _ in range(4):
        breaker.failed()
    assert breaker.state is BreakerState.OPEN

    clock.now += 3.0
    breaker.succeeded()
    breaker.failed()

    assert _state(breaker) is BreakerState.OPEN
    clock.now += 2.0
    assert breaker.allow()  # the cool-down ran from the opening


def test_a_partner_known_back_closes_it_at_once() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, min_calls=1, cool_down_s=600.0)
    _calls(breaker, "f")

    breaker.close()

    assert breaker.state is BreakerState.CLOSED
    _calls(breaker, "s")


def test_the_opening_is_logged_with_the_failure_share_and_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    breaker = _breaker(clock, min_calls=20, failure_ratio=0.6)

    with caplog.at_level(logging.WARNING, logger="gateway.partner_breaker"):
        _calls(breaker, "s" * 8 + "f" * 12)

    assert breaker.state is BreakerState.OPEN
    assert "12 of 20 calls in the last 10.0 s failed (60%): breaker open for 5.0 s" in caplog.text


def test_a_pause_longer_than_the_window_forgets_every_call_before_it() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, min_calls=20)
    _calls(breaker, "s" * 100_000)
    clock.now += 3600.0

    _calls(breaker, "f" * 20)

    assert breaker.state is BreakerState.OPEN


_GATEWAY = {
    "listen": "127.0.0.1:0",
    "insecure": True,
    "bank": "bank.yaml",
    "model_version": "0123456789abcdef",
    "decision_config": "decision.yaml",
    "pseudonym_key": "pseudonym.key",
    "audit": {"backend": "sqlite", "path": "audit.db"},
}


@pytest.mark.parametrize(
    ("breaker", "named"),
    [
        ({"failure_ratio": 0}, "'partner.breaker.failure_ratio'"),
        ({"failure_ratio": 1.5}, "'partner.breaker.failure_ratio'"),
        ({"min_calls": 0}, "'partner.breaker.min_calls'"),
        ({"window_s": 0}, "'partner.breaker.window_s'"),
        ({"failures": 64}, "unknown key 'partner.breaker.failures'"),
    ],
)
def test_breaker_settings_out_of_range_are_refused_naming_the_setting(
    tmp_path: Path, breaker: dict[str, float], named: str
) -> None:
    path = tmp_path / "gateway.yaml"
    body = {**_GATEWAY, "partner": {"address": "127.0.0.1:1", "breaker": breaker}}
    path.write_text(yaml.safe_dump(body))

    with pytest.raises(ConfigError, match=r"gateway\.yaml") as refused:
        load_settings(GatewaySettings, path)

    assert named in str(refused.value)


def test_a_ratio_of_one_opens_only_when_every_call_failed() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, min_calls=3, failure_ratio=1.0)

    _calls(breaker, "ffsff")
    assert breaker.state is BreakerState.CLOSED
    clock.now += 10.0
    _calls(breaker, "fff")

    assert _state(breaker) is BreakerState.OPEN
