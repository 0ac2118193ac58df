"""The secure RPC core over real loopback servers: mutual TLS, identity, authorization, errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cobrand.errors import CertificateError, ConfigError, UnknownModelVersion
from cobrand.pki import Role
from cobrand.rpc import (
    INCIDENT_METADATA_KEY,
    REASON_METADATA_KEY,
    TlsFiles,
    caller,
    create_channel,
    create_server,
    full_method_name,
    service_roles,
)
from cobrand.v1 import alignment_pb2
from tests.conftest import ThrowAwayPki, forge_leaf

SERVICE = "cobrand.test.Probe"
TIMEOUT = 5.0
# Requests and replies are raw bytes: no (de)serializers on the client side.
_BYTES: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}


def _who(context: grpc.ServicerContext) -> bytes:
    return str(caller(context)).encode()


def _who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
    return _who(context)


def _unknown_version(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise UnknownModelVersion("model version 'risk-v9' is not loaded; loaded: risk-v7")


def _crash(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise RuntimeError("secret detail /srv/bank/features.parquet")


def _own_abort(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.OUT_OF_RANGE, "handler's own status")


def _who_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    yield b"first"
    yield _who(context)


def _fail_mid_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    yield b"first"
    raise UnknownModelVersion("model version 'risk-v9' was unloaded mid-stream")


def _count_then_who(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    count = sum(1 for _ in requests)
    return f"{count} from ".encode() + _who(context)


def _echo_with_who(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for request in requests:
        yield request + b" " + _who(context)


def _add_probe(server: grpc.Server) -> None:
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "WhoAmI": grpc.unary_unary_rpc_method_handler(_who_am_i),
                    "UnknownVersion": grpc.unary_unary_rpc_method_handler(_unknown_version),
                    "Crash": grpc.unary_unary_rpc_method_handler(_crash),
                    "OwnAbort": grpc.unary_unary_rpc_method_handler(_own_abort),
                    "WhoStream": grpc.unary_stream_rpc_method_handler(_who_stream),
                    "FailMidStream": grpc.unary_stream_rpc_method_handler(_fail_mid_stream),
                    "CountThenWho": grpc.stream_unary_rpc_method_handler(_count_then_who),
                    "EchoWithWho": grpc.stream_stream_rpc_method_handler(_echo_with_who),
                },
            ),
        )
    )


def _method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def _call(channel: grpc.Channel, name: str, request: bytes = b"") -> bytes:
    stub = channel.unary_unary(_method(name), **_BYTES)
    reply: bytes = stub(request, timeout=TIMEOUT)
    return reply


def _refusal(channel: grpc.Channel, name: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        _call(channel, name)
    return caught.value


def _trailing(error: grpc.RpcError) -> dict[str, str]:
    call: Any = error  # a failed call's error is also its grpc.Call
    return dict(call.trailing_metadata() or ())


def _reason(error: grpc.RpcError) -> str | None:
    return _trailing(error).get(REASON_METADATA_KEY)


def _raw_channel(port: int, files: TlsFiles, *, with_client_cert: bool = True) -> grpc.Channel:
    """A channel built without cobrand's client-side checks, to prove the server refuses."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=files.ca_bundle.read_bytes(),
        private_key=files.key.read_bytes() if with_client_cert else None,
        certificate_chain=files.cert.read_bytes() if with_client_cert else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


@pytest.fixture(scope="module")
def port(throwaway_pki: ThrowAwayPki) -> Iterator[int]:
    server, bound = create_server(_add_probe, "127.0.0.1:0", throwaway_pki.tls("gateway"))
    server.start()
    yield bound
    server.stop(None)


@pytest.fixture(scope="module")
def app_channel(throwaway_pki: ThrowAwayPki, port: int) -> Iterator[grpc.Channel]:
    with create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("app")) as channel:
        yield channel


def test_client_with_right_certificate_gets_through_and_is_identified(
    app_channel: grpc.Channel,
) -> None:
    assert _call(app_channel, "WhoAmI") == b"bank:app:app"


def test_other_partys_certificate_is_trusted_and_identified(
    throwaway_pki: ThrowAwayPki, port: int
) -> None:
    with create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("partner")) as channel:
        assert _call(channel, "WhoAmI") == b"partner:partner:partner"


def test_valid_certificate_gets_through_without_cobrands_client_side_checks(
    throwaway_pki: ThrowAwayPki, port: int
) -> None:
    # The control for the refusals below: the raw channel itself is sound.
    with _raw_channel(port, throwaway_pki.tls("app")) as channel:
        assert _call(channel, "WhoAmI") == b"bank:app:app"


def test_client_without_certificate_is_refused(throwaway_pki: ThrowAwayPki, port: int) -> None:
    with _raw_channel(port, throwaway_pki.tls("app"), with_client_cert=False) as channel:
        assert _refusal(channel, "WhoAmI").code() is grpc.StatusCode.UNAVAILABLE


def test_certificate_from_a_foreign_ca_is_refused(throwaway_pki: ThrowAwayPki, port: int) -> None:
    foreign = throwaway_pki.tls("foreign-app")
    # Trust the server, so that only the server's refusal of the client certificate is tested.
    files = foreign.model_copy(update={"ca_bundle": throwaway_pki.tls("app").ca_bundle})
    with _raw_channel(port, files) as channel:
        assert _refusal(channel, "WhoAmI").code() is grpc.StatusCode.UNAVAILABLE


def test_expired_client_certificate_is_refused_by_the_server(
    throwaway_pki: ThrowAwayPki, port: int
) -> None:
    with _raw_channel(port, throwaway_pki.tls("expired-app")) as channel:
        assert _refusal(channel, "WhoAmI").code() is grpc.StatusCode.UNAVAILABLE


def test_expired_client_certificate_is_refused_before_connecting(
    throwaway_pki: ThrowAwayPki, port: int
) -> None:
    with pytest.raises(CertificateError, match=r"expired-app\.crt expired on"):
        create_channel(f"127.0.0.1:{port}", throwaway_pki.tls("expired-app"))


def test_partner_ca_cannot_mint_a_bank_role(
    throwaway_pki: ThrowAwayPki, port: int, tmp_path: Path
) -> None:
    forged = forge_leaf(
        throwaway_pki.ca_dir("partner"),
        tmp_path,
        subject={"O": "partner", "OU": "gateway", "CN": "evil"},
        uris=("urn:cobrand:partner:gateway:evil",),
    )
    files = forged.model_copy(update={"ca_bundle": throwaway_pki.tls("app").ca_bundle})
    with _raw_channel(port, files) as channel:
        error = _refusal(channel, "WhoAmI")
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "party 'partner' cannot hold role 'gateway'" in (error.details() or "")
    assert _reason(error) == "CERTIFICATE_ERROR"


def test_cobrand_error_reaches_client_as_its_status_with_message_and_reason(
    app_channel: grpc.Channel,
) -> None:
    error = _refusal(app_channel, "UnknownVersion")
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert error.details() == "model version 'risk-v9' is not loaded; loaded: risk-v7"
    assert _reason(error) == "UNKNOWN_MODEL_VERSION"


def test_unexpected_exception_becomes_internal_with_incident_and_no_traceback(
    app_channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="cobrand.rpc"):
        error = _refusal(app_channel, "Crash")
    assert error.code() is grpc.StatusCode.INTERNAL
    details = error.details() or ""
    incident = _trailing(error)[INCIDENT_METADATA_KEY]
    assert details == f"internal error, incident {incident}"
    assert "secret detail" not in details
    assert "Traceback" not in details
    (record,) = [r for r in caplog.records if incident in r.getMessage()]
    assert record.exc_info is not None
    assert "secret detail" in str(record.exc_info[1])


def test_handlers_own_abort_passes_through_untouched(app_channel: grpc.Channel) -> None:
    error = _refusal(app_channel, "OwnAbort")
    assert error.code() is grpc.StatusCode.OUT_OF_RANGE
    assert error.details() == "handler's own status"


def test_server_streaming_handler_sees_caller(app_channel: grpc.Channel) -> None:
    stream = app_channel.unary_stream(_method("WhoStream"), **_BYTES)
    assert list(stream(b"", timeout=TIMEOUT)) == [b"first", b"bank:app:app"]


def test_error_raised_mid_stream_reaches_client_as_its_status(app_channel: grpc.Channel) -> None:
    stream = app_channel.unary_stream(_method("FailMidStream"), **_BYTES)
    received: list[bytes] = []
    with pytest.raises(grpc.RpcError) as caught:
        received.extend(stream(b"", timeout=TIMEOUT))
    assert received == [b"first"]
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert _reason(caught.value) == "UNKNOWN_MODEL_VERSION"


def test_client_streaming_handler_sees_caller(app_channel: grpc.Channel) -> None:
    collect = app_channel.stream_unary(_method("CountThenWho"), **_BYTES)
    assert collect(iter([b"a", b"b", b"c"]), timeout=TIMEOUT) == b"3 from bank:app:app"


def test_bidirectional_streaming_handler_sees_caller(app_channel: grpc.Channel) -> None:
    chat = app_channel.stream_stream(_method("EchoWithWho"), **_BYTES)
    replies = list(chat(iter([b"x", b"y"]), timeout=TIMEOUT))
    assert replies == [b"x bank:app:app", b"y bank:app:app"]


@pytest.fixture(scope="module")
def allow_list_port(throwaway_pki: ThrowAwayPki) -> Iterator[int]:
    """A server where WhoAmI is open to apps, WhoStream to apps and partners, nothing else."""
    allowed = {
        _method("WhoAmI"): frozenset({Role.APP}),
        _method("WhoStream"): frozenset({Role.APP, Role.PARTNER}),
    }
    server, bound = create_server(
        [_add_probe], "127.0.0.1:0", throwaway_pki.tls("gateway"), allowed_roles=allowed
    )
    server.start()
    yield bound
    server.stop(None)


def test_listed_role_may_call(throwaway_pki: ThrowAwayPki, allow_list_port: int) -> None:
    with create_channel(f"127.0.0.1:{allow_list_port}", throwaway_pki.tls("partner-app")) as ch:
        assert _call(ch, "WhoAmI") == b"partner:app:partner-app"


def test_partner_cert_cannot_call_a_method_meant_for_apps(
    throwaway_pki: ThrowAwayPki, allow_list_port: int
) -> None:
    with create_channel(f"127.0.0.1:{allow_list_port}", throwaway_pki.tls("partner")) as ch:
        error = _refusal(ch, "WhoAmI")
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == f"role 'partner' may not call {_method('WhoAmI')}"
    assert _reason(error) == "PERMISSION_DENIED"


def test_unlisted_method_is_denied_to_everyone(
    throwaway_pki: ThrowAwayPki, allow_list_port: int
) -> None:
    with create_channel(f"127.0.0.1:{allow_list_port}", throwaway_pki.tls("app")) as ch:
        assert _refusal(ch, "Crash").code() is grpc.StatusCode.PERMISSION_DENIED


def test_streaming_method_is_checked_against_the_allow_list_too(
    throwaway_pki: ThrowAwayPki, allow_list_port: int
) -> None:
    with create_channel(f"127.0.0.1:{allow_list_port}", throwaway_pki.tls("bank-trainer")) as ch:
        stream = ch.unary_stream(_method("WhoStream"), **_BYTES)
        with pytest.raises(grpc.RpcError) as caught:
            list(stream(b"", timeout=TIMEOUT))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_allow_list_key_must_be_a_full_method_name(throwaway_pki: ThrowAwayPki) -> None:
    with pytest.raises(ConfigError, match="'WhoAmI' is not a full method name"):
        create_server(
            _add_probe,
            "127.0.0.1:0",
            throwaway_pki.tls("gateway"),
            allowed_roles={"WhoAmI": frozenset({Role.APP})},
        )


def test_server_without_tls_and_without_insecure_flag_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"no TLS files.*--insecure"):
        create_server(_add_probe, "127.0.0.1:0", None)


def test_channel_without_tls_and_without_insecure_flag_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"no TLS files.*--insecure"):
        create_channel("127.0.0.1:1", None)


def test_tls_files_together_with_insecure_flag_are_refused(throwaway_pki: ThrowAwayPki) -> None:
    files = throwaway_pki.tls("gateway")
    with pytest.raises(ConfigError, match="both TLS files and --insecure"):
        create_server(_add_probe, "127.0.0.1:0", files, insecure=True)
    with pytest.raises(ConfigError, match="both TLS files and --insecure"):
        create_channel("127.0.0.1:1", files, insecure=True)


def test_insecure_server_warns_and_authenticates_nobody(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cobrand.rpc"):
        server, port = create_server(_add_probe, "127.0.0.1:0", None, insecure=True)
    assert any("INSECURE server" in r.getMessage() for r in caplog.records)
    server.start()
    try:
        with create_channel(f"127.0.0.1:{port}", None, insecure=True) as channel:
            error = _refusal(channel, "WhoAmI")
    finally:
        server.stop(None)
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "the caller presented no client certificate"


def test_unbindable_address_is_a_config_error(throwaway_pki: ThrowAwayPki) -> None:
    with pytest.raises(ConfigError, match="cannot bind server address"):
        create_server(_add_probe, "256.0.0.1:0", throwaway_pki.tls("gateway"))


def test_allow_lists_name_every_method_of_a_service_by_its_grpc_path() -> None:
    service = alignment_pb2.DESCRIPTOR.services_by_name["AlignmentService"]

    assert full_method_name(service, "OpenAlignment") == (
        "/cobrand.v1.AlignmentService/OpenAlignment"
    )
    assert service_roles(service, frozenset({Role.BANK})) == {
        f"/cobrand.v1.AlignmentService/{name}": frozenset({Role.BANK})
        for name in ("OpenAlignment", "ReblindBankPoints", "FetchPartnerPoints", "CommitAlignment")
    }
