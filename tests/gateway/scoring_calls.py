"""Test helper (no tests): calling a started gateway as an application flow does.

`scoring_stub` opens a ScoringGateway stub with one holder's certificate of the throw-away PKI,
`application` builds a ScoreApplication request, and `spelt` writes a canonical mobile number as
an applicant types it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from cobrand.rpc import create_channel
from cobrand.v1 import scoring_pb2, scoring_pb2_grpc
from tests.conftest import ThrowAwayPki

__all__ = ["BANK", "PARTNER", "TIMEOUT", "application", "scoring_stub", "spelt"]

TIMEOUT: Final = 10.0
"""Seconds a test waits for one call: far past any deadline under test, on a shared machine."""
BANK: Final = scoring_pb2.APPLICATION_CHANNEL_BANK
PARTNER: Final = scoring_pb2.APPLICATION_CHANNEL_PARTNER


@contextmanager
def scoring_stub(pki: ThrowAwayPki, port: int, holder: str = "app") -> Iterator[Any]:
    """A ScoringGateway stub on the loopback `port`, calling with `holder`'s certificate."""
    with create_channel(f"127.0.0.1:{port}", pki.tls(holder)) as channel:
        yield scoring_pb2_grpc.ScoringGatewayStub(channel)  # type: ignore[no-untyped-call]


def application(
    application_id: str,
    identifier: str,
    *,
    consent: bool = False,
    channel: int = BANK,
    model_version: str = "",
    **fields: float | str | None,
) -> scoring_pb2.ScoreApplicationRequest:
    """An application of a mobile number; a field given None is sent explicitly missing."""
    message = scoring_pb2.ScoreApplicationRequest(
        application_id=application_id,
        channel=channel,  # type: ignore[arg-type]
        identifier_kind="mobile_cn",
        identifier=identifier,
        partner_lookup_consent=consent,
        model_version=model_version,
    )
    for name, value in fields.items():
        if value is None:
            message.fields[name].missing = True
        elif isinstance(value, str):
            message.fields[name].category = value
        else:
            message.fields[name].number = value
    return message


def spelt(canonical: str) -> str:
    """A canonical +86 mobile number as an applicant types it: "138-0013-8000"."""
    digits = canonical[3:]
    return f"{digits[:3]}-{digits[3:7]}-{digits[7:]}"
