"""The gateway's partner client takes a restarted partner back into use once it is connected and
has loaded the version again, without waiting for its open breaker's cool-down."""

from __future__ import annotations

import time

from cobrand.rpc import create_channel
from gateway.audit_record import PartnerSliceStatus
from gateway.partner_breaker import BreakerState, CircuitBreaker
from gateway.partner_client import PartnerClient
from gateway.settings import BreakerSettings
from partner_node.server import start_partner_node
from tests.conftest import ThrowAwayPki
from tests.gateway.synth_version import PARTNER_WIDTH
from tests.training_sites import TrainingSites

BACK_WITHIN_S = 5.0


def test_an_open_breaker_closes_once_the_restarted_partner_is_connected_and_warmed(
    throwaway_pki: ThrowAwayPki, sites: TrainingSites, version_id: str, aligned_key: bytes
) -> None:
    config = sites.partner_node_config(throwaway_pki.tls("partner"))
    node = start_partner_node(config)
    port = node.port
    # Open once a call of the two fails, with a cool-down far past the test: only the
    # reconnection can close the breaker in time.
    breaker = CircuitBreaker(BreakerSettings(min_calls=2, failure_ratio=0.5, cool_down_s=600.0))
    channel = create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("gateway"))
    try:
        client = PartnerClient(channel, 5.0, breaker)
        before = client.embedding("before", version_id, aligned_key, PARTNER_WIDTH)
        node.stop(grace=None)
        down = client.embedding("down", version_id, aligned_key, PARTNER_WIDTH)
        opened = breaker.state
        node = start_partner_node(config.model_copy(update={"listen": f"127.0.0.1:{port}"}))
        restarted_at = time.monotonic()
        while breaker.state is not BreakerState.CLOSED:
            assert time.monotonic() - restarted_at < BACK_WITHIN_S, "breaker still open"
            time.sleep(0.02)
        back_after_s = time.monotonic() - restarted_at
        after = client.embedding("after", version_id, aligned_key, PARTNER_WIDTH)
    finally:
        # The channel first: closed while a reconnection is pending, gRPC's connectivity
        # thread would trip over it.
        channel.close()
        node.stop(grace=None)

    assert before.status is PartnerSliceStatus.USED
    assert down.status is PartnerSliceStatus.UNAVAILABLE
    assert opened is BreakerState.OPEN
    assert back_after_s < BACK_WITHIN_S
    assert after.status is PartnerSliceStatus.USED
