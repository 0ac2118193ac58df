"""Waiting for a partner that went away mid-run, so the run can resume instead of failing.

The bank notices a partner_node that died through the data plane at once (its stream breaks with
``UNAVAILABLE``) and one that hangs after the data plane's reply timeout. `wait_for_partner`
then asks the partner's status through the control plane with capped exponential backoff, for
at most `ResumePolicy.wait_s` seconds, and once the partner answers waits for the data-plane
channel to be connected again, so the round planned next can stream at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Annotated, Protocol

import grpc
from pydantic import Field

from cobrand.errors import Unavailable
from cobrand.rounds_protocol import PartnerStatus
from cobrand.settings import Section

__all__ = ["ResumePolicy", "StatusSource", "wait_for_partner"]

_LOG = logging.getLogger(__name__)


class ResumePolicy(Section):
    """How a run waits for a partner that became unavailable.

    Attributes
    ----------
    wait_s : float
        Seconds to wait for the partner to answer again each time it went away; 0 fails the
        run at once.
    first_retry_s : float
        Seconds before the first status query; each later one waits twice as long as the one
        before, up to `max_backoff_s`.
    max_backoff_s : float
    max_resumes : int
        Resumes a run may make; the next loss of the partner fails it.
    """

    wait_s: Annotated[float, Field(ge=0)] = 300.0
    first_retry_s: Annotated[float, Field(gt=0)] = 0.5
    max_backoff_s: Annotated[float, Field(gt=0)] = 10.0
    max_resumes: Annotated[int, Field(ge=0)] = 5


class StatusSource(Protocol):
    """What the wait asks: the partner's status through the control plane."""

    def status(self, run_id: str) -> PartnerStatus:
        """The partner's status; `Unavailable` while it cannot be reached."""


def wait_for_partner(
    partner: StatusSource,
    channel: grpc.Channel,
    run_id: str,
    policy: ResumePolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> PartnerStatus:
    """The partner's status once both its planes answer again.

    Raises
    ------
    Unavailable
        The partner did not answer within ``policy.wait_s`` seconds.
    """
    deadline = time.monotonic() + policy.wait_s
    delay = policy.first_retry_s
    while True:
        try:
            status = partner.status(run_id)
            break
        except Unavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(
                    f"run {run_id}: the partner did not answer again within "
                    f"{policy.wait_s:g} s: {exc}"
                ) from exc
            _LOG.info("[Resume] run %s: partner unavailable; asking again in %.1f s", run_id, delay)
            sleep(min(delay, left))
            delay = min(2 * delay, policy.max_backoff_s)
    # Asks the channel to connect now, rather than after its own reconnection backoff.
    ready = grpc.channel_ready_future(channel)
    try:
        ready.result(timeout=max(deadline - time.monotonic(), 1.0))
    except grpc.FutureTimeoutError:
        ready.cancel()  # stops its polling thread
        raise Unavailable(
            f"run {run_id}: the partner answers on the control plane but its data plane did "
            f"not connect within {policy.wait_s:g} s"
        ) from None
    return status
