"""The circuit breaker of the gateway's calls to the partner: opens on a failure rate over a window.

A gateway process keeps one `CircuitBreaker` per partner client. It opens when, over the last
``window_s`` seconds, at least ``min_calls`` calls were made and at least ``failure_ratio`` of
them failed; open, it refuses every call at once (the application is decided from the bank's
slice, costing nothing) for ``cool_down_s``, then lets one trial call through (half-open): its
success closes the breaker, its failure opens it again for another cool-down.

Why a rate and not a count of failures in a row: with 32 calls in flight, one stall at the
partner fails all 32 together, which is no outage; a partner that fails half of what it is
asked over ten seconds is one.

The window is a ring of `_BUCKETS` buckets, each a tenth of the window, holding its calls and
failures, with running totals: recording an outcome costs O(1) amortised (a call at most clears
the buckets that slid out since the last one), whatever the traffic.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

from gateway.settings import BreakerSettings

__all__ = ["BreakerState", "CircuitBreaker"]

_LOG = logging.getLogger(__name__)

# The window's resolution: it covers the last window_s to within a tenth of it.
_BUCKETS = 10


class BreakerState(enum.Enum):
    """Closed: calls go through. Open: none do. Half-open: one trial call does."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class _CallWindow:
    """Calls and failures over a sliding window, in a ring of buckets; not thread-safe."""

    def __init__(self, window_s: float) -> None:
        self._bucket_s = window_s / _BUCKETS
        self._calls = [0] * _BUCKETS
        self._failures = [0] * _BUCKETS
        self._newest = 0  # the newest bucket's number: seconds of the clock // bucket_s
        self.calls = 0
        self.failures = 0

    def record(self, now: float, failed: bool) -> None:
        """Count one call's outcome at clock time `now`."""
        bucket = int(now // self._bucket_s)
        if bucket > self._newest:
            # Clear the buckets that slid out of the window (all of them after a long pause).
            for stale in range(max(self._newest + 1, bucket - _BUCKETS + 1), bucket + 1):
                self._clear(stale % _BUCKETS)
            self._newest = bucket
        # An earlier time (a clock that stepped back) counts in the newest bucket.
        slot = self._newest % _BUCKETS
        self._calls[slot] += 1
        self.calls += 1
        if failed:
            self._failures[slot] += 1
            self.failures += 1

    def reset(self) -> None:
        """Forget every call."""
        for slot in range(_BUCKETS):
            self._clear(slot)

    def _clear(self, slot: int) -> None:
        self.calls -= self._calls[slot]
        self.failures -= self._failures[slot]
        self._calls[slot] = self._failures[slot] = 0


class CircuitBreaker:
    """Failure-rate circuit breaker over a sliding window; thread-safe.

    Parameters
    ----------
    settings : BreakerSettings
        Its window, minimum calls, failure ratio and cool-down (validated there).
    clock : callable, optional
        Monotonic seconds (tests pass their own).
    """

    def __init__(
        self, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._window = _CallWindow(settings.window_s)
        self._state = BreakerState.CLOSED
        # When it opened or, half-open, when the trial call went out.
        self._since = 0.0

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker past its cool-down still reads open until a call)."""
        with self._lock:
            return self._state

    def allow(self) -> bool:
        """Whether a call may go out now; True for the one trial call of a half-open breaker.

        A caller that was allowed must report the outcome (`succeeded` or `failed`). A trial
        whose outcome has not come within a cool-down (its caller raised) is replaced by
        another, so a lost report cannot hold the breaker half-open.
        """
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            now = self._clock()
            if now - self._since < self._settings.cool_down_s:
                return False  # open and cooling down, or half-open with the trial out
            self._state = BreakerState.HALF_OPEN
            self._since = now
            return True

    def succeeded(self) -> None:
        """The call went well: counted when closed; a half-open breaker's trial closes it.

        An open breaker ignores it: a call sent before it opened says nothing of the partner
        since.
        """
        with self._lock:
            if self._state is BreakerState.CLOSED:
                self._window.record(self._clock(), failed=False)
            elif self._state is BreakerState.HALF_OPEN:
                self._close("the trial call succeeded")

    def failed(self) -> None:
        """The call failed: counted when closed, opening the breaker past the failure ratio; a
        half-open breaker's trial opens it again. An open breaker ignores it."""
        with self._lock:
            now = self._clock()
            if self._state is BreakerState.HALF_OPEN:
                self._state, self._since = BreakerState.OPEN, now
                _LOG.warning(
                    "[PartnerBreaker] the trial call failed: breaker open again for %.1f s",
                    self._settings.cool_down_s,
                )
                return
            if self._state is BreakerState.OPEN:
                return
            window = self._window
            window.record(now, failed=True)
            if (
                window.calls >= self._settings.min_calls
                and window.failures >= self._settings.failure_ratio * window.calls
            ):
                _LOG.warning(
                    "[PartnerBreaker] %d of %d calls in the last %.1f s failed (%.0f%%): "
                    "breaker open for %.1f s, applications are scored from the bank's slice",
                    window.failures,
                    window.calls,
                    self._settings.window_s,
                    100.0 * window.failures / window.calls,
                    self._settings.cool_down_s,
                )
                self._state, self._since = BreakerState.OPEN, now

    def close(self) -> None:
        """The partner is known to be back (reconnected and warmed): close now, whatever the
        state, and forget the calls counted so far."""
        with self._lock:
            self._close("the partner is connected and warmed again")

    def _close(self, why: str) -> None:
        # The window starts afresh: the failures that opened it are no reason to open it again.
        if self._state is not BreakerState.CLOSED:
            _LOG.info("[PartnerBreaker] %s: breaker closed", why)
        self._state = BreakerState.CLOSED
        self._window.reset()
