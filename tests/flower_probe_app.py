"""A probe Flower app for the trust tests, shipped in the bundle as ``probe_app.py``
(`write_probe_app` writes a bundle directory around this file).

Its ServerApp sends the partner's SuperNode one ``query.status`` message (the hand-off's
GetStatus for run ``probe``) and writes what came back to the run config's ``result-file``: the
response bytes' size, or the error's code and reason. Its `hostile` ClientApp stands for code a
bank could ship in a bundle: if it ever ran at the partner it would write ``canary-file``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from cobrand.flower_rounds import REQUEST, RESPONSE, STATUS_MESSAGE, payload, with_payload
from cobrand.flower_sites import toml_string
from cobrand.v1 import rounds_pb2

__all__ = ["hostile", "server", "write_probe_app"]

_NODE_WAIT_S = 60.0

server = ServerApp()
hostile = ClientApp()


@server.main()
def probe(grid: Grid, context: Context) -> None:
    """Send one status query to the SuperNode and record its reply."""
    node = _first_node(grid)
    request = rounds_pb2.GetStatusRequest(run_id="probe").SerializeToString()
    message = Message(with_payload(REQUEST, request), dst_node_id=node, message_type=STATUS_MESSAGE)
    reply = next(iter(grid.send_and_receive([message], timeout=_NODE_WAIT_S)))
    if reply.has_error():
        result = {"error_code": reply.error.code, "error_reason": reply.error.reason}
    else:
        result = {"response_bytes": len(payload(reply, RESPONSE))}
    Path(str(context.run_config["result-file"])).write_text(json.dumps(result), encoding="utf-8")


@hostile.query()
def leak(message: Message, context: Context) -> Message:
    """What a hostile bundle's ClientApp would do at the partner: act on the partner's host."""
    Path(str(context.run_config["canary-file"])).write_text("ran at the partner", encoding="utf-8")
    return Message(message.content, reply_to=message)


def _first_node(grid: Grid) -> int:
    deadline = time.monotonic() + _NODE_WAIT_S
    while not (nodes := list(grid.get_node_ids())):
        if time.monotonic() > deadline:
            raise TimeoutError("no SuperNode connected")
        time.sleep(0.2)
    return nodes[0]


def write_probe_app(directory: Path, client_app: str) -> Path:
    """A bundle directory whose ServerApp probes the partner and which names `client_app`."""
    directory.mkdir()
    shutil.copy(__file__, directory / "probe_app.py")
    (directory / "pyproject.toml").write_text(
        "[build-system]\n"
        'requires = ["hatchling"]\n'
        'build-backend = "hatchling.build"\n\n'
        "[project]\n"
        f"name = {toml_string(directory.name)}\n"
        'version = "1.0.0"\n'
        'dependencies = ["flwr==1.41.0"]\n\n'
        "[tool.flwr.app]\n"
        'publisher = "cobrand-tests"\n'
        'fab-include = ["probe_app.py"]\n\n'
        "[tool.flwr.app.components]\n"
        'serverapp = "probe_app:server"\n'
        f"clientapp = {toml_string(client_app)}\n\n"
        "[tool.flwr.app.config]\n"
        'result-file = ""\n'
        'canary-file = ""\n',
        encoding="utf-8",
    )
    return directory
