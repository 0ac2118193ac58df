"""Refused calls are recorded durably by the interceptor, over a real mutual-TLS server: who,
which method, when and from where; allowed calls write nothing."""

from __future__ import annotations

import datetime as dt
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from cobrand.errors import ConfigError
from cobrand.rpc import TlsFiles, create_channel, create_server
from tests.cobrand.guarded_server import RAW, guarded_server, method, reason, request_bytes
from tests.conftest import ThrowAwayPki, forge_leaf

TIMEOUT = 5.0


@pytest.fixture
def denial_log(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "denials.jsonl"


@pytest.fixture
def port(throwaway_pki: ThrowAwayPki, denial_log: Path) -> Iterator[int]:
    with guarded_server(throwaway_pki.tls("gateway"), denial_log) as bound:
        yield bound


def _denials(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()]


def _serial(files: TlsFiles) -> str:
    return f"{x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number:x}"


def _refused(channel: grpc.Channel, name: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(method(name), **RAW)(request_bytes("a-1"), timeout=TIMEOUT)
    return caught.value


def test_a_call_refused_by_the_allow_list_is_recorded_with_who_what_when_and_where(
    throwaway_pki: ThrowAwayPki, port: int, denial_log: Path
) -> None:
    before = dt.datetime.now(dt.UTC)
    with create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("partner-app")) as channel:
        error = _refused(channel, "Secret")

    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    (denial,) = _denials(denial_log)
    assert denial == {
        "at": denial["at"],
        "method": "/cobrand.test.Guarded/Secret",
        "status": "PERMISSION_DENIED",
        "reason": "PERMISSION_DENIED",
        "peer": denial["peer"],
        "subject": "CN=partner-app,OU=app,O=partner",
        "serial": _serial(throwaway_pki.tls("partner-app")),
        "party": "partner",
        "role": "app",
        "name": "partner-app",
        "message": "role 'app' may not call /cobrand.test.Guarded/Secret",
    }
    assert denial["peer"].startswith("ipv4:127.0.0.1:")
    assert before <= dt.datetime.fromisoformat(denial["at"]) <= dt.datetime.now(dt.UTC)
    assert stat.S_IMODE(denial_log.stat().st_mode) == 0o600


def test_a_permission_denied_raised_by_a_handler_is_recorded_too(
    throwaway_pki: ThrowAwayPki, port: int, denial_log: Path
) -> None:
    with create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("app")) as channel:
        error = _refused(channel, "Refuse")

    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    (denial,) = _denials(denial_log)
    assert (denial["method"], denial["party"], denial["role"]) == (
        "/cobrand.test.Guarded/Refuse",
        "bank",
        "app",
    )
    assert denial["message"] == error.details()


def test_a_certificate_without_a_cobrand_identity_is_recorded_as_unauthenticated(
    throwaway_pki: ThrowAwayPki, port: int, denial_log: Path, tmp_path: Path
) -> None:
    # Signed by the bank's CA (so TLS accepts it) but with no urn:cobrand identity.
    forged = forge_leaf(
        throwaway_pki.ca_dir("bank"),
        tmp_path / "forged",
        subject={"O": "bank", "OU": "app", "CN": "nameless"},
        uris=(),
    )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=forged.ca_bundle.read_bytes(),
        private_key=forged.key.read_bytes(),
        certificate_chain=forged.cert.read_bytes(),
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        error = _refused(channel, "Unary")

    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason(error) == "CERTIFICATE_ERROR"
    (denial,) = _denials(denial_log)
    assert denial["status"] == "UNAUTHENTICATED"
    assert denial["subject"] == "CN=nameless,OU=app,O=bank"
    assert denial["serial"] == _serial(forged)
    assert (denial["party"], denial["role"], denial["name"]) == (None, None, None)


def test_allowed_calls_write_nothing(
    throwaway_pki: ThrowAwayPki, port: int, denial_log: Path
) -> None:
    with create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("app")) as channel:
        for number in range(5):
            reply = channel.unary_unary(method("Unary"), **RAW)(
                request_bytes(f"a-{number}"), timeout=TIMEOUT
            )
            assert reply == request_bytes(f"a-{number}")

    assert denial_log.read_bytes() == b""


def test_every_refusal_is_appended_in_order(
    throwaway_pki: ThrowAwayPki, port: int, denial_log: Path
) -> None:
    with create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("app")) as channel:
        for name in ("Secret", "Refuse", "Secret"):
            _refused(channel, name)

    assert [d["method"].rsplit("/", 1)[1] for d in _denials(denial_log)] == [
        "Secret",
        "Refuse",
        "Secret",
    ]


def test_a_denial_log_that_cannot_be_written_stops_the_server_at_start(
    throwaway_pki: ThrowAwayPki, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the log's folder should be")
    with pytest.raises(ConfigError, match=r"denial log .*not-a-directory/denials\.jsonl"):
        create_server(
            lambda server: None,
            "127.0.0.1:0",
            throwaway_pki.tls("gateway"),
            denial_log=blocker / "denials.jsonl",
        )
