"""How command-line commands end on an error: one line on stderr and exit code 2.

Every command body runs inside ``cli_errors()``: an error from the cobrand tree (bad file, bad
certificate...) or a failed gRPC call becomes ``error: <what is wrong>`` instead of a traceback,
as Flower's ``flwr_cli_grpc_exc_handler`` does for its CLI.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import grpc
import typer

from cobrand.errors import CobrandError
from cobrand.rpc import REASON_METADATA_KEY

__all__ = ["EXIT_ERROR", "cli_errors"]

EXIT_ERROR = 2


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn ``CobrandError`` and ``grpc.RpcError`` into one stderr line and ``typer.Exit(2)``."""
    try:
        yield
    except CobrandError as err:
        _fail(str(err), err)
    except grpc.RpcError as err:
        _fail(_describe_rpc_error(err), err)


def _fail(message: str, cause: Exception) -> NoReturn:
    # Multi-line messages (a YAML excerpt, a remote details string) still make one line.
    typer.echo("error: " + " ".join(message.split()), err=True)
    raise typer.Exit(code=EXIT_ERROR) from cause


def _describe_rpc_error(err: grpc.RpcError) -> str:
    # A failed call's RpcError is also its grpc.Call; other RpcErrors carry only their text.
    call: Any = err
    if not callable(getattr(call, "code", None)):
        return f"RPC failed: {err}"
    status = call.code()
    reason = dict(call.trailing_metadata() or ()).get(REASON_METADATA_KEY)
    label = f"{status.name} ({reason})" if reason else status.name
    return f"RPC failed with {label}: {call.details() or 'no details'}"
