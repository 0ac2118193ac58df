"""One hop of a do-nothing echo chain on the gateway's stack: the floor of `bench.gateway_load`.

    python -m bench.echo_chain --ca-bundle TRUST --cert CRT --key KEY --allow ROLE
                               [--forward HOST:PORT] [--reply-bytes N] [--max-workers N]
                               [--port P] --port-file FILE

Serves one unary method, ``/bench.Echo/Echo``, with `cobrand.rpc.create_server` (mutual TLS,
the role-checking interceptor, a thread pool) to callers of role ``--allow``. With
``--forward`` it passes each request on to the next hop over mutual TLS (its own certificate,
as the gateway calls the partner) and returns that hop's reply; without, it returns the
request padded to ``--reply-bytes``, so the chain's replies are as large as the gateway's.
Started twice it is the chain client -> echo -> echo: the gateway's two hops with no work.
It serves on loopback, on ``--port`` (0: a free one); several started on one port share it
as a gateway's worker processes do (gRPC binds with ``SO_REUSEPORT``). The port is written to
``--port-file`` once serving; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

import grpc

from cobrand.durable import write_atomically
from cobrand.pki import Role
from cobrand.rpc import TlsFiles, create_channel, create_server

__all__ = ["ECHO_METHOD", "main"]

ECHO_METHOD = "/bench.Echo/Echo"
# As the gateway waits for the partner at most, on a machine shared with other work.
_FORWARD_TIMEOUT_S = 10.0


def _handler(
    forward: str | None, tls: TlsFiles, reply_bytes: int
) -> grpc.GenericRpcHandler[bytes, bytes]:
    if forward is None:
        padding = b"\x00" * reply_bytes

        def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
            return request + padding[len(request) :]

    else:
        # One channel for all handler threads, as the gateway keeps one to the partner.
        call = create_channel(forward, tls).unary_unary(
            ECHO_METHOD, request_serializer=None, response_deserializer=None
        )

        def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
            reply: bytes = call(request, timeout=_FORWARD_TIMEOUT_S)
            return reply

    return grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )


def main() -> None:
    """Parse the options and serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ca-bundle", type=Path, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--allow", type=Role, required=True, help="The callers' role.")
    parser.add_argument("--forward", help="host:port of the next hop; none: the last hop.")
    parser.add_argument("--reply-bytes", type=int, default=0)
    parser.add_argument("--max-workers", type=int, default=10)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, required=True)
    options = parser.parse_args()
    tls = TlsFiles(ca_bundle=options.ca_bundle, cert=options.cert, key=options.key)
    handler = _handler(options.forward, tls, options.reply_bytes)
    server, port = create_server(
        lambda s: s.add_generic_rpc_handlers((handler,)),
        f"127.0.0.1:{options.port}",
        tls,
        allowed_roles={ECHO_METHOD: frozenset({options.allow})},
        max_workers=options.max_workers,
    )
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    server.start()
    write_atomically(options.port_file, f"{port}\n".encode("ascii"))
    stopping.wait()
    server.stop(grace=1.0).wait()


if __name__ == "__main__":
    main()
