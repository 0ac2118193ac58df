"""Fixtures (a pytest plugin, registered in ``tests/conftest.py``): one published world for the
whole test run, its partner node and a gateway serving it, shared by the modules that only call
them.

`world` is a synthetic set with one model version published at both parties, built once per
run; `sites`, `version_id` and `people` read it. `bank_app` calls `gateway` as the bank's
application flow. A module or package that changes its world (stops the partner, publishes or
swaps versions, kills processes, fuzzes the partner's limits) overrides `world` with one of its
own, built by `tests.gateway.gateway_sites.publish_world`; asking for the shared `partner_node`
or `gateway` there is then a scope error, never a silent mix of two worlds.

The gateway's audit log is shared by every module that calls it and replays a repeated
application id, so each module names its applications with its own prefix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import pytest

# Every test run loads this plugin: the servers' modules (over a second to import) are imported
# in the fixtures, so only runs that start a server pay for them.
if TYPE_CHECKING:
    from gateway.server import Gateway
    from gateway.settings import GatewaySettings
    from partner_node.server import PartnerNode
    from tests.conftest import ThrowAwayPki
    from tests.gateway.gateway_sites import Applicants, World
    from tests.training_sites import TrainingSites

STRANGERS: Final = ("+8619999999999", "+8619999999998", "+8619999999997")
"""Mobile numbers of neither party's customers in the shared world (`world` checks)."""


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The run's shared world: 600 customers, one version published at both sides."""
    import numpy as np

    from tests.gateway.gateway_sites import publish_world
    from tests.partner_node.embedding_sites import partner_table

    made = publish_world(tmp_path_factory.mktemp("shared-world"), customers=600, seed=31)
    table, _ = partner_table(made.sites)
    known = set(np.asarray(table.ids, dtype=str)) | set(made.people.bank_only)
    assert not known & set(STRANGERS), "a stranger is a customer"
    return made


@pytest.fixture
def sites(world: World) -> TrainingSites:
    """The files and data directories of `world`."""
    return world.sites


@pytest.fixture
def version_id(world: World) -> str:
    """The version `world` publishes at both sides."""
    return world.version_id


@pytest.fixture
def people(world: World) -> Applicants:
    """The aligned customers of `world` and the bank's customers outside the alignment."""
    return world.people


@pytest.fixture(scope="session")
def partner_node(throwaway_pki: ThrowAwayPki, world: World) -> Iterator[PartnerNode]:
    """The partner node of `world`, all its services, in this process."""
    from tests.training_sites import running_partner

    with running_partner(throwaway_pki, world.sites) as node:
        yield node


@pytest.fixture(scope="session")
def gateway_config(
    tmp_path_factory: pytest.TempPathFactory,
    throwaway_pki: ThrowAwayPki,
    world: World,
    partner_node: PartnerNode,
) -> GatewaySettings:
    """The settings of `gateway`: its files in a directory of their own."""
    from tests.gateway.gateway_sites import gateway_settings

    # A lenient deadline: the tests sharing it are about what a used slice gives, and the
    # machine is shared; the 50 ms deadline is tested on gateways of their own.
    return gateway_settings(
        tmp_path_factory.mktemp("shared-gateway"),
        world.sites,
        throwaway_pki,
        world.version_id,
        partner_node.port,
        deadline_ms=1000,
    )


@pytest.fixture(scope="session")
def gateway(gateway_config: GatewaySettings) -> Iterator[Gateway]:
    """A gateway serving `world` with `partner_node`, its partner verified."""
    from tests.gateway.gateway_sites import running_gateway

    with running_gateway(gateway_config) as started:
        assert started.partner.verified
        yield started


@pytest.fixture(scope="session")
def bank_app(throwaway_pki: ThrowAwayPki, gateway: Gateway) -> Iterator[Any]:
    """A ScoringGateway stub on `gateway` with the bank's application flow's certificate."""
    from tests.gateway.scoring_calls import scoring_stub

    with scoring_stub(throwaway_pki, gateway.port) as stub:
        yield stub
