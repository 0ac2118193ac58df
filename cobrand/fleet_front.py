"""The bank's SuperLink behind a Fleet-only front: SuperNodes get the Fleet API, nothing else.

Flower 1.41's SuperLink serves its Fleet, Control and Runtime APIs as one HTTPS server on one
``--host``/``--port`` (``flwr/superlink/cli/flower_superlink.py``, ``flwr/superlink/main.py``),
and without Flower's enterprise OIDC plugin its Control API accepts every caller
(``NoOpControlAuthnPlugin``). Whoever reaches the Fleet port could therefore start, list and
stop runs, or take a ServerApp's task from the Runtime API. So the SuperLink binds to loopback
only, where the bank's risk team runs ``flwr``, and the address the partner dials is this front:
an HTTPS server (the SuperLink's own certificate) that relays exactly the Fleet API's routes, as
Flower's own Fleet router declares them, to the SuperLink on loopback and answers anything else
with 404 without reaching the SuperLink. SuperNode authentication stays Flower's: the signed
headers are relayed unchanged and checked by the SuperLink.

`run_superlink_behind_front` is what ``cobrand bank superlink`` and
`cobrand.flower_local.LocalFederation` (``python -m cobrand.fleet_front``, this module's `main`)
run: the SuperLink as a child process on loopback and the front in the foreground, each stopping
the other (a SIGKILLed front too: `cobrand.child_process.stop_with_parent`).
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Annotated, Any, Final

import httpx
import typer
import uvicorn
from fastapi.routing import APIRoute
from flwr.superlink.routers.fleet.router import router as _flower_fleet_router

from cobrand.child_process import stop_child, stop_with_parent, wait_listening
from cobrand.errors import ConfigError
from cobrand.flower_sites import SuperLinkTls, superlink_command

__all__ = ["FLEET_PATHS", "FleetFront", "main", "run_superlink_behind_front"]

_LOG = logging.getLogger(__name__)

FLEET_PATHS: Final = frozenset(
    route.path for route in _flower_fleet_router.routes if isinstance(route, APIRoute)
)
"""Every route of Flower's Fleet API (``/v1/fleet/...``); the front relays these alone."""

LOOPBACK: Final = "127.0.0.1"
# A Fleet request carries one message or one object chunk (Flower chunks arrays at 5 MB, a FAB
# is at most 10 MB); anything far larger is refused before it is read whole.
_MAX_BODY_BYTES: Final = 64 * 1024 * 1024
# Headers that describe one hop, not the request: never relayed.
_HOP_HEADERS: Final = frozenset(
    {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade",
     b"proxy-authorization", b"content-length"}
)  # fmt: skip
# The relayed reply is the decoded body, dated and signed by this server.
_REPLY_HEADERS_NOT_RELAYED: Final = _HOP_HEADERS | {b"content-encoding", b"date", b"server"}
_STOP_GRACE_S: Final = 10.0
_UPSTREAM_TIMEOUT_S: Final = 120.0

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class FleetFront:
    """An ASGI app relaying Fleet API requests to the SuperLink at `upstream`, refusing the rest.

    Parameters
    ----------
    upstream : str
        ``host:port`` of the SuperLink on loopback.
    ca_cert : Path
        The CA the SuperLink's certificate chains to (the relay verifies it).
    """

    def __init__(self, upstream: str, ca_cert: Path) -> None:
        self._upstream = f"https://{upstream}"
        self._client = httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=str(ca_cert)),
            timeout=_UPSTREAM_TIMEOUT_S,
            follow_redirects=False,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] != "POST" or path not in FLEET_PATHS:
            _LOG.warning("[FleetFront] refused %s %r: not a Fleet API route", scope["method"], path)
            await _respond(send, 404, b"not a Fleet API route\n")
            return
        body = await _read_body(receive)
        if body is None:
            await _respond(send, 413, b"request too large for the Fleet API\n")
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_HEADERS]
        try:
            reply = await self._client.post(self._upstream + path, content=body, headers=headers)
        except httpx.TransportError as exc:
            _LOG.warning("[FleetFront] SuperLink unreachable: %s", type(exc).__name__)
            await _respond(send, 502, b"SuperLink unreachable\n")
            return
        await send(
            {
                "type": "http.response.start",
                "status": reply.status_code,
                "headers": [
                    (k, v)
                    for k, v in reply.headers.raw
                    if k.lower() not in _REPLY_HEADERS_NOT_RELAYED
                ],
            }
        )
        await send({"type": "http.response.body", "body": reply.content})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None once it exceeds `_MAX_BODY_BYTES`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not event.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: Send, status: int, text: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(text))],
        }
    )
    await send({"type": "http.response.body", "body": text})


def run_superlink_behind_front(
    tls: SuperLinkTls,
    fleet_host: str,
    fleet_port: int,
    control_port: int,
    env: Mapping[str, str],
    log_file: Path | None = None,
) -> None:
    """Run the SuperLink on loopback and the Fleet-only front on `fleet_host`:`fleet_port`.

    Returns when either stops: SIGTERM or SIGINT stops the front, which then stops the
    SuperLink; a SuperLink that exits stops the front.

    Parameters
    ----------
    tls : SuperLinkTls
        Served by both; the certificate needs SANs for `fleet_host` (the partner dials it) and
        127.0.0.1 (the front and the ``flwr`` CLI dial the SuperLink there).
    fleet_host, fleet_port : str, int
        Where the partner's SuperNode dials.
    control_port : int
        The SuperLink's own port on 127.0.0.1: Control, Runtime and Fleet APIs, for the bank's
        ``flwr`` CLI and its ServerApps.
    env : mapping of str to str
        The SuperLink's environment (`cobrand.flower_sites.flower_environment`).
    log_file : Path, optional
        Where the SuperLink's output goes (default: inherited).

    Raises
    ------
    ConfigError
        `fleet_port` and `control_port` are the same.
    FailedPrecondition
        The SuperLink exited before it listened.
    Unavailable
        The SuperLink did not listen within a minute.
    """
    if fleet_port == control_port:
        raise ConfigError(
            f"the Fleet-only front's port and the SuperLink's own port are both {fleet_port}"
        )
    # uvicorn re-raises the signal it stopped on once it has stopped: here a SystemExit (a stop
    # asked for), so the SuperLink is still stopped below; the default action would orphan it.
    signal.signal(signal.SIGTERM, _exit)
    output = log_file.open("ab") if log_file is not None else None
    try:
        superlink = subprocess.Popen(  # noqa: S603 -- Flower's program, arguments built here
            superlink_command(tls, LOOPBACK, control_port),
            env=dict(env),
            preexec_fn=stop_with_parent(),
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
        )
    finally:
        if output is not None:
            output.close()
    try:
        wait_listening(superlink, (LOOPBACK, control_port), what="SuperLink", timeout=60.0)
        server = uvicorn.Server(
            uvicorn.Config(
                FleetFront(f"{LOOPBACK}:{control_port}", tls.ca_cert),
                host=fleet_host,
                port=fleet_port,
                ssl_certfile=str(tls.cert),
                ssl_keyfile=str(tls.key),
                log_level="warning",
                access_log=False,
                lifespan="on",
            )
        )

        def stop_front_when_superlink_exits() -> None:
            superlink.wait()
            server.should_exit = True

        threading.Thread(target=stop_front_when_superlink_exits, daemon=True).start()
        _LOG.info("[FleetFront] Fleet API on %s:%d", fleet_host, fleet_port)
        server.run()
    finally:
        # The SuperLink stops the ServerApp processes it started.
        stop_child(superlink, _STOP_GRACE_S)


def _exit(_signum: int, _frame: object) -> None:
    sys.exit(0)


def main(
    ca_cert: Annotated[Path, typer.Option(help="The CA that signed the SuperLink's certificate.")],
    cert: Annotated[Path, typer.Option(help="The SuperLink's certificate.")],
    key: Annotated[Path, typer.Option(help="The SuperLink's private key.")],
    fleet_host: Annotated[str, typer.Option(help="Interface of the Fleet-only front.")],
    fleet_port: Annotated[int, typer.Option(help="Port of the Fleet-only front.")],
    control_port: Annotated[int, typer.Option(help="The SuperLink's port on 127.0.0.1.")],
    log_file: Annotated[Path | None, typer.Option(help="The SuperLink's log.")] = None,
) -> None:
    """Run the SuperLink on loopback behind the Fleet-only front (environment: the caller's)."""
    run_superlink_behind_front(
        SuperLinkTls(ca_cert, cert, key),
        fleet_host,
        fleet_port,
        control_port,
        dict(os.environ),
        log_file,
    )


if __name__ == "__main__":
    typer.run(main)
