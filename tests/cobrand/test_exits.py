"""`cli_errors`: project errors and failed RPCs end a command with one stderr line and exit 2."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import typer
from typer.testing import CliRunner

from cobrand.commands.exits import EXIT_ERROR, cli_errors
from cobrand.errors import SchemaError, UnknownModelVersion
from cobrand.rpc import create_channel, create_server

runner = CliRunner()
# Requests and replies are raw bytes: no (de)serializers on the client side.
_BYTES: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}


def _run_command(body: Callable[[], None]) -> tuple[int, str, str]:
    app = typer.Typer()

    @app.command()
    def command() -> None:
        with cli_errors():
            body()

    result = runner.invoke(app, [], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _unknown_version(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise UnknownModelVersion("model version 'risk-v9' is not loaded")


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    handler = grpc.method_handlers_generic_handler(
        "cobrand.test.Exits", {"Fail": grpc.unary_unary_rpc_method_handler(_unknown_version)}
    )
    server, bound = create_server(
        lambda s: s.add_generic_rpc_handlers((handler,)), "127.0.0.1:0", None, insecure=True
    )
    server.start()
    yield bound
    server.stop(None)


def test_project_error_is_one_line_on_stderr_and_exit_2() -> None:
    def body() -> None:
        raise SchemaError("bank.yaml: key 'features[2].type':\n  Input should be 'numeric'")

    code, out, err = _run_command(body)
    assert code == EXIT_ERROR
    assert out == ""
    assert err == "error: bank.yaml: key 'features[2].type': Input should be 'numeric'\n"


def test_failed_rpc_names_status_reason_and_details(port: int) -> None:
    def body() -> None:
        with create_channel(f"127.0.0.1:{port}", None, insecure=True) as channel:
            channel.unary_unary("/cobrand.test.Exits/Fail", **_BYTES)(b"", timeout=5)

    code, _, err = _run_command(body)
    assert code == EXIT_ERROR
    assert err == (
        "error: RPC failed with NOT_FOUND (UNKNOWN_MODEL_VERSION): "
        "model version 'risk-v9' is not loaded\n"
    )


def test_unreachable_server_is_one_line_with_unavailable() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, now closed
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    def body() -> None:
        with create_channel(f"127.0.0.1:{closed_port}", None, insecure=True) as channel:
            channel.unary_unary("/cobrand.test.Exits/Fail", **_BYTES)(b"", timeout=5)

    code, _, err = _run_command(body)
    assert code == EXIT_ERROR
    assert err.startswith("error: RPC failed with UNAVAILABLE: ")
    assert err.count("\n") == 1


def test_other_exceptions_are_not_swallowed() -> None:
    def body() -> None:
        raise KeyError("a bug, not an input problem")

    with pytest.raises(KeyError):
        _run_command(body)
