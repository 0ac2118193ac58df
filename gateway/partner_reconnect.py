"""Taking a partner that comes back into use at once: reconnect, warm, close the breaker.

When the connection to the partner drops (the partner node was restarted or killed), gRPC leaves
the channel idle until the next call, and the circuit breaker, open by then, sends the next call
only after its cool-down; that call, the partner's first lookup of the version since its
restart, then has to load the version within an application's 50 ms deadline, fails, and opens
the breaker for another cool-down. So a partner restarted under load would go unused for two or
more cool-downs.

`Reconnector` watches the channel instead. Once it has been connected and the connection drops,
it runs `rewarm` on a thread of its own: a call that waits for the channel to be ready (so gRPC
reconnects at once, retrying with the channel's capped backoff, see ``cobrand.rpc``) and has
the partner load the versions in use, under a deadline long enough for the load. If that
succeeds the partner is back, and `on_back` is called (the partner client closes its breaker);
if the partner is still away, the channel's next change of state starts another attempt.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc

__all__ = ["Reconnector"]

_LOG = logging.getLogger(__name__)

_DROPPED = frozenset({grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.TRANSIENT_FAILURE})


class Reconnector:
    """Reconnects `channel` as soon as its connection drops, then rewarms the partner.

    Parameters
    ----------
    channel : grpc.Channel
        To the partner; watched for as long as it is open.
    rewarm : callable
        Waits for the channel to be ready and has the partner load what the gateway uses;
        True when it did. Raises ValueError once the channel is closed (as gRPC does).
    on_back : callable
        Called once the partner is connected and rewarmed.
    """

    def __init__(
        self, channel: grpc.Channel, rewarm: Callable[[], bool], on_back: Callable[[], None]
    ) -> None:
        self._rewarm = rewarm
        self._on_back = on_back
        self._lock = threading.Lock()
        self._connected_once = False
        self._reconnecting = False
        channel.subscribe(self._on_state)

    def _on_state(self, state: grpc.ChannelConnectivity) -> None:
        # On gRPC's connectivity thread: decide, never block.
        with self._lock:
            if state is grpc.ChannelConnectivity.READY:
                self._connected_once = True
                return
            if state not in _DROPPED or not self._connected_once or self._reconnecting:
                return
            self._reconnecting = True
        threading.Thread(target=self._back, name="partner-reconnect", daemon=True).start()

    def _back(self) -> None:
        _LOG.warning("[PartnerReconnect] the connection to the partner dropped: reconnecting")
        try:
            if self._rewarm():
                _LOG.info("[PartnerReconnect] the partner is connected again and warmed up")
                self._on_back()
        except ValueError:
            pass  # gRPC refuses calls on a closed channel: the gateway is stopping
        finally:
            with self._lock:
                self._reconnecting = False
