"""The Fleet-only front decides by route alone: only Flower's Fleet API routes, by POST, are relayed
to the SuperLink; any other request is answered 404 by the front itself. The upstream here is a
closed loopback port, so a relayed request shows as 502 and a refused one never reaches it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cobrand.fleet_front import FLEET_PATHS, FleetFront
from tests.conftest import ThrowAwayPki
from tests.loopback import unused_port


@pytest.fixture(scope="module")
def ca_cert(throwaway_pki: ThrowAwayPki) -> Path:
    return throwaway_pki.ca_dir("bank") / "ca.crt"


def _status(ca_cert: Path, method: str, path: str, body: bytes = b"") -> int:
    async def call() -> int:
        front = FleetFront(f"127.0.0.1:{unused_port()}", ca_cert)
        transport = httpx.ASGITransport(app=front)
        async with httpx.AsyncClient(transport=transport, base_url="https://front") as client:
            reply = await client.request(method, path, content=body)
        return reply.status_code

    return asyncio.run(call())


def test_the_relayed_routes_are_exactly_flowers_fleet_api() -> None:
    assert FLEET_PATHS
    assert all(path.startswith("/v1/fleet/") for path in FLEET_PATHS)
    assert {
        "/v1/fleet/pull-messages",
        "/v1/fleet/push-messages",
        "/v1/fleet/get-fab",
    } <= FLEET_PATHS


@pytest.mark.parametrize("path", sorted(FLEET_PATHS))
def test_every_fleet_route_is_relayed_to_the_superlink(ca_cert: Path, path: str) -> None:
    assert _status(ca_cert, "POST", path) == 502  # relayed; the closed upstream did not answer


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.one_of(
        st.sampled_from(
            [
                "/v1/control/start-run",
                "/v1/control/list-runs",
                "/v1/runtime/acquire-task",
                "/v1/fleet/../control/start-run",
                "/v1/fleet/pull-messages/",
                "/v1/fleet",
                "/docs",
                "/",
            ]
        ),
        st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60).map(
            lambda text: "/" + text.replace("?", "").replace("#", "")
        ),
    ),
)
def test_any_other_request_is_refused_by_the_front_itself(
    ca_cert: Path, method: str, path: str
) -> None:
    relayed = method == "POST" and path in FLEET_PATHS

    status = _status(ca_cert, method, path)

    assert status == (502 if relayed else 404)


def test_a_body_far_larger_than_any_fleet_request_is_refused_before_it_is_relayed(
    ca_cert: Path,
) -> None:
    huge = b"\0" * (64 * 1024 * 1024 + 1)

    assert _status(ca_cert, "POST", "/v1/fleet/push-object", huge) == 413
