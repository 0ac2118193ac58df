"""The partner's ClientApp runner: its SuperNode's tasks run the partner's own installed ClientApp.

Flower 1.41 cannot check that a bundle (FAB) the SuperLink hands the SuperNode comes from someone
the partner trusts: ``flower-supernode --trusted-entities`` accepts only bundles carrying Flower
Hub signatures (``flwr/supernode/start_client_internal.py``, ``_verify_fab``; the SuperLink
attaches them only to apps fetched from the Hub, ``flwr/superlink/servicer/control/
control_handlers.py``), so a bank-built bundle is always refused, and without the option the
SuperNode's ``flwr-clientapp`` installs each bundle and imports whichever ClientApp it names
(``flwr/supernode/runtime/run_clientapp.py``): the bank could run any code at the partner.

So the partner's SuperNode runs in process isolation (it starts no ClientApp), and this runner,
a long-lived process of the partner's, takes each task from the SuperNode's runtime API on
loopback and runs `partner_node.flower_client.client_app.app`, imported from the partner's own
installation. The bundle's code is never installed or imported: it is read only to check that it
names that ClientApp (`PINNED_CLIENT_APP`); a bundle naming another is answered with Flower's
``INVALID_FAB`` error and nothing of it runs. Running every task in this one long-lived process
also spares Flower's new ClientApp process per message (about 1.8 s each).

The SuperNode hands a task only to a runner signing its request with the secret both were
started with (Flower's SuperExec authentication), so no other process on the partner's host can
take the bank's messages from it. ``cobrand partner supernode`` runs the SuperNode and this
runner together (`run_supernode_with_runner`); ``python -m partner_node.flower_client.runner
--supernode 127.0.0.1:PORT --auth-secret-file PATH`` runs the runner alone, beside a SuperNode
started otherwise (`cobrand.flower_local.LocalFederation`).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, NamedTuple

import httpx
import typer
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.config import get_fab_config
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import (
    pull_task_input,
    push_message,
    push_task_output,
)

from cobrand.child_process import stop_child, stop_with_parent
from partner_node.flower_client.client_app import app as partner_client_app

__all__ = [
    "PARTNER_APP",
    "PINNED_CLIENT_APP",
    "PinnedApp",
    "main",
    "run_supernode_with_runner",
    "run_task",
    "serve_tasks",
    "stop_on_signals",
]

_LOG = logging.getLogger(__name__)

PINNED_CLIENT_APP: Final = "partner_node.flower_client.client_app:app"
"""The one ClientApp a bundle may name (``[tool.flwr.app.components] clientapp``)."""


class PinnedApp(NamedTuple):
    """The one ClientApp a runner executes, and the reference a bundle must name to get it."""

    app: ClientApp
    ref: str


PARTNER_APP: Final = PinnedApp(partner_client_app, PINNED_CLIENT_APP)
"""What the partner's runner executes: its own installed ClientApp."""

_POLL_S: Final = 0.1
# The SuperNode's method that hands out a task: signed with the secret it shares with the runner.
_ACQUIRE_TASK: Final = "/flwr.proto.Runtime/AcquireTask"
_STOP_GRACE_S: Final = 10.0


def serve_tasks(
    supernode: str, secret: bytes, stop: threading.Event, pinned: PinnedApp = PARTNER_APP
) -> None:
    """Run the SuperNode's ClientApp tasks with `pinned`'s app until `stop` is set.

    Parameters
    ----------
    supernode : str
        ``host:port`` of the SuperNode's runtime API (loopback, plain HTTP: Flower's default).
    secret : bytes
        The secret the SuperNode was started with (``--superexec-auth-secret-file``).
    stop : threading.Event
    pinned : PinnedApp
        Default: the partner's installed ClientApp (another only for Flower's floor in
        ``bench``, which must pay what a training run pays per message).
    """
    client = RuntimeHttpClient.from_server_address(
        server_address=supernode,
        insecure=True,
        root_certificates=None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="SuperExec"),
            SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={_ACQUIRE_TASK}),
        ],
    )
    try:
        while not stop.is_set():
            try:
                acquired = client.AcquireTask(
                    AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
                )
            except httpx.HTTPError as exc:
                # The SuperNode starting or restarting: try again shortly.
                _LOG.debug("[ClientAppRunner] SuperNode not reachable: %s", type(exc).__name__)
                stop.wait(1.0)
                continue
            if acquired.HasField("task") and acquired.token:
                try:
                    run_task(supernode, acquired.token, pinned)
                except Exception:  # noqa: BLE001 -- one task's failure must not stop the runner
                    # Its failure is already pushed as the task's output; the next task may run.
                    _LOG.exception("[ClientAppRunner] task %d failed", acquired.task.task_id)
            else:
                stop.wait(_POLL_S)
    finally:
        client.close()


def run_task(supernode: str, token: str, pinned: PinnedApp) -> None:
    """Run one task: pull its message, answer it with `pinned`'s app if the bundle names it,
    push the answer back."""
    client = RuntimeHttpClient.from_server_address(
        server_address=supernode,
        insecure=True,
        root_certificates=None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context: Context | None = None
    status, details = SubStatus.FAILED, "the task's input could not be read"
    try:
        message, context, run, fab = pull_task_input(client)
        named = _named_client_app(fab.content)
        if named != pinned.ref:
            _LOG.error(
                "[ClientAppRunner] refused run %d: its bundle names ClientApp %r, not %r",
                run.run_id,
                named,
                pinned.ref,
            )
            details = f"the partner runs only {pinned.ref}; the bundle names {named!r}"
            reply = Message(Error(code=ErrorCode.INVALID_FAB, reason=details), reply_to=message)
        else:
            reply = _answer(pinned.app, message, context)
            status, details = SubStatus.COMPLETED, ""
        push_message(client, reply, context)
    finally:
        push_task_output(client, context, status, details)
        heartbeat.stop()
        client.close()


def _named_client_app(fab: bytes) -> str | None:
    """The ClientApp reference the bundle's ``pyproject.toml`` names (None if unreadable)."""
    try:
        config: Any = get_fab_config(fab)
        named = config["tool"]["flwr"]["app"]["components"]["clientapp"]
    except (ValueError, KeyError, TypeError):
        return None
    return named if isinstance(named, str) else None


def _answer(app: ClientApp, message: Message, context: Context) -> Message:
    try:
        return app(message=message, context=context)
    except Exception as exc:  # noqa: BLE001 -- any failure becomes the reply's error, as in Flower
        _LOG.exception(
            "[ClientAppRunner] the ClientApp raised on %s", message.metadata.message_type
        )
        reason = f"{type(exc).__name__}: {exc}"
        return Message(
            Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message
        )


def run_supernode_with_runner(
    supernode_command: Sequence[str], env: Mapping[str, str], runtime_address: str, secret: bytes
) -> None:
    """Run the SuperNode (process isolation) and this runner for its tasks until either stops.

    SIGTERM or SIGINT stops the runner, which then stops the SuperNode; a SuperNode that exits
    stops the runner.

    Parameters
    ----------
    supernode_command : sequence of str
        ``flower-supernode ... --isolation process`` (`cobrand.flower_sites.supernode_command`
        with a ``runner_secret``).
    env : mapping of str to str
    runtime_address : str
        ``127.0.0.1:PORT``, the SuperNode's runtime API (its ``--port``).
    secret : bytes
        The secret in the SuperNode's ``--superexec-auth-secret-file``.
    """
    stop = stop_on_signals()
    supernode = subprocess.Popen(  # noqa: S603 -- Flower's program, arguments built here
        list(supernode_command), env=dict(env), preexec_fn=stop_with_parent()
    )

    def stop_when_supernode_exits() -> None:
        supernode.wait()
        stop.set()

    threading.Thread(target=stop_when_supernode_exits, daemon=True).start()
    try:
        serve_tasks(runtime_address, secret, stop)
    finally:
        stop_child(supernode, _STOP_GRACE_S)


def stop_on_signals() -> threading.Event:
    """An event SIGTERM or SIGINT sets: the `stop` of a runner run as a program."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def main(
    supernode: Annotated[
        str, typer.Option(help="host:port of the SuperNode's runtime API (loopback).")
    ],
    auth_secret_file: Annotated[
        Path, typer.Option(help="The secret file the SuperNode was started with.")
    ],
) -> None:
    """Run the partner's ClientApp for its SuperNode's tasks until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve_tasks(supernode, auth_secret_file.read_bytes(), stop_on_signals())


if __name__ == "__main__":
    typer.run(main)
