"""Waiting for a partner that went away: capped backoff, a bounded wait, both planes back."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import grpc
import pytest

from bank_node.resume import ResumePolicy, wait_for_partner
from cobrand.errors import Unavailable
from cobrand.rounds_protocol import AlignmentVersion, PartnerStatus
from cobrand.rpc import create_channel
from tests.conftest import ThrowAwayPki

STATUS = PartnerStatus(
    alignment=AlignmentVersion(
        "a", hashlib.sha256(b"f").digest(), hashlib.sha256(b"i").digest(), 10
    ),
    preprocessor_sha256=hashlib.sha256(b"p").digest(),
    embedding_width=4,
    run=None,
)


class ComingBack:
    """A partner whose control plane fails `failures` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.asked = 0

    def status(self, run_id: str) -> PartnerStatus:
        self.asked += 1
        if self.asked <= self.failures:
            raise Unavailable("query.status: partner_node is unavailable: connection refused")
        return STATUS


@pytest.fixture
def channel(throwaway_pki: ThrowAwayPki, partner_port: int) -> Iterator[grpc.Channel]:
    """A bank-trainer channel to a partner data plane that is up."""
    with create_channel(f"127.0.0.1:{partner_port}", throwaway_pki.tls("bank-trainer")) as made:
        yield made


def test_the_partner_is_asked_again_with_capped_exponential_backoff(channel: grpc.Channel) -> None:
    partner = ComingBack(failures=5)
    slept: list[float] = []
    policy = ResumePolicy(wait_s=60.0, first_retry_s=0.5, max_backoff_s=3.0)

    status = wait_for_partner(partner, channel, "run-1", policy, sleep=slept.append)

    assert status == STATUS
    assert slept == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_partner_that_does_not_come_back_in_time_leaves_the_run_unavailable(
    channel: grpc.Channel,
) -> None:
    policy = ResumePolicy(wait_s=0.6, first_retry_s=0.2, max_backoff_s=0.2)
    started = time.monotonic()

    with pytest.raises(Unavailable, match=r"did not answer again within 0\.6 s: .*refused"):
        wait_for_partner(ComingBack(failures=1000), channel, "run-1", policy)

    assert 0.5 < time.monotonic() - started < 2.0


def test_a_partner_whose_data_plane_does_not_connect_is_still_unavailable(
    throwaway_pki: ThrowAwayPki,
) -> None:
    policy = ResumePolicy(wait_s=1.0)
    # Nothing listens on port 9 of loopback (discard): the channel never becomes ready.
    with (
        create_channel("127.0.0.1:9", throwaway_pki.tls("bank-trainer")) as nowhere,
        pytest.raises(Unavailable, match="its data plane did not connect within 1 s"),
    ):
        wait_for_partner(ComingBack(failures=0), nowhere, "run-1", policy)
