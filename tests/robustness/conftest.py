"""Fixtures of the hostile-input and fault tests: a published world of their own (they exhaust
the partner's limits, tamper with a version's files and kill processes, so they never share the
run's world of `tests.gateway.shared_world`), a partner node serving it in this process, and the
figures each test reports.

Every test here records what it tried and survived (`Figures.add`); the figures are printed in
a section of their own at the end of the run, whether or not output is captured.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cobrand.alignment_store import AlignmentStore
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_sites import World, publish_world
from tests.training_sites import running_partner

_FIGURES = pytest.StashKey[list[str]]()


class Figures:
    """The figures of this run's hostile-input and fault tests, one line each."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = lines

    def add(self, line: str) -> None:
        """Record one figure line, printed in the run's terminal summary."""
        self._lines.append(line)


@pytest.fixture(scope="session")
def figures(pytestconfig: pytest.Config) -> Figures:
    """Where tests record their figures."""
    return Figures(pytestconfig.stash.setdefault(_FIGURES, []))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    lines = config.stash.get(_FIGURES, [])
    if lines:
        terminalreporter.section("hostile input and faults: figures")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A synthetic set with one version published at both parties, for these tests alone."""
    return publish_world(tmp_path_factory.mktemp("sites"), customers=400, seed=43)


@pytest.fixture(scope="package")
def aligned_key(world: World) -> bytes:
    """The join key of a customer in the alignment of `world`."""
    with AlignmentStore(world.sites.partner_data) as store:
        keys, _ = next(store.members())
    return bytes(keys[0].tobytes())


@pytest.fixture(scope="package")
def partner_node(throwaway_pki: ThrowAwayPki, world: World) -> Iterator[PartnerNode]:
    """The partner node of `world`, all four services, in this process."""
    with running_partner(throwaway_pki, world.sites) as node:
        yield node
