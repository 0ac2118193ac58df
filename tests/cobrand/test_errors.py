"""The error tree: every class carries a gRPC status and a machine-readable reason."""

from __future__ import annotations

import grpc
import pytest

from cobrand import errors
from cobrand.errors import CobrandError


def _all_subclasses(cls: type[CobrandError]) -> list[type[CobrandError]]:
    """Every project error class below `cls` (classes the tests define to fail are skipped)."""
    found: list[type[CobrandError]] = []
    for sub in cls.__subclasses__():
        if not sub.__module__.startswith("tests."):
            found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


def test_every_error_class_has_a_non_ok_status_code() -> None:
    subclasses = _all_subclasses(CobrandError)
    assert len(subclasses) >= len(errors.__all__) - 1
    for cls in subclasses:
        assert isinstance(cls.status, grpc.StatusCode), cls
        assert cls.status is not grpc.StatusCode.OK, cls


def test_every_exported_error_is_in_the_tree() -> None:
    exported = {getattr(errors, name) for name in errors.__all__} - {CobrandError}
    assert exported <= set(_all_subclasses(CobrandError))


def test_error_class_without_status_fails_at_definition() -> None:
    with pytest.raises(TypeError, match="must set class attribute 'status'"):

        class ForgetfulError(CobrandError):
            pass


def test_error_class_with_ok_status_fails_at_definition() -> None:
    with pytest.raises(TypeError, match="cannot be OK"):

        class CheerfulError(CobrandError):
            status = grpc.StatusCode.OK


def test_subclass_inherits_its_parents_status() -> None:
    assert errors.SchemaError.status is grpc.StatusCode.INVALID_ARGUMENT
    assert errors.UnknownModelVersion.status is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("cls", "reason"),
    [
        (errors.SchemaError, "SCHEMA_ERROR"),
        (errors.UnknownModelVersion, "UNKNOWN_MODEL_VERSION"),
        (errors.ConfigError, "CONFIG_ERROR"),
        (errors.AlreadyExists, "ALREADY_EXISTS"),
    ],
)
def test_reason_is_upper_snake_of_class_name(cls: type[CobrandError], reason: str) -> None:
    assert cls.reason == reason
    assert cls("x").reason == reason


def test_acronyms_in_class_names_stay_one_word() -> None:
    class TLSHandshakeError(CobrandError):
        status = grpc.StatusCode.UNAVAILABLE

    assert TLSHandshakeError.reason == "TLS_HANDSHAKE_ERROR"


def test_base_error_cannot_be_raised_without_a_status() -> None:
    with pytest.raises(TypeError, match="concrete subclass"):
        CobrandError("no status")


def test_message_is_kept_as_given() -> None:
    err = errors.CertificateError("certificate tls/gw.crt expired on 2026-01-02")
    assert str(err) == "certificate tls/gw.crt expired on 2026-01-02"
    assert err.status is grpc.StatusCode.UNAUTHENTICATED
