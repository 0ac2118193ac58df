"""Fixtures of the hostile-input and fault tests: one synthetic set published at both parties,
a partner node serving it in this process, and the figures each test reports.

Every test here records what it tried and survived (`Figures.add`); the figures are printed in
a section of their own at the end of the run, whether or not output is captured.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cobrand.alignment_store import AlignmentStore
from partner_node.server import PartnerNode, start_partner_node
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_sites import Applicants, applicants_of, publish_both_sides
from tests.training_sites import TrainingSites, write_training_sites

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
def sites(tmp_path_factory: pytest.TempPathFactory) -> TrainingSites:
    """A synthetic set with the same alignment stored at both parties."""
    return write_training_sites(tmp_path_factory.mktemp("sites"), customers=400, seed=43)


@pytest.fixture(scope="package")
def version_id(sites: TrainingSites) -> str:
    """A model version published at both parties of `sites`."""
    return publish_both_sides(sites)


@pytest.fixture(scope="package")
def people(sites: TrainingSites) -> Applicants:
    """The set's aligned customers and the bank's customers outside the alignment."""
    return applicants_of(sites)


@pytest.fixture(scope="package")
def aligned_key(sites: TrainingSites) -> bytes:
    """The join key of a customer in the alignment of `sites`."""
    with AlignmentStore(sites.partner_data) as store:
        keys, _ = next(store.members())
    return bytes(keys[0].tobytes())


@pytest.fixture(scope="package")
def partner_node(
    throwaway_pki: ThrowAwayPki, sites: TrainingSites, version_id: str
) -> Iterator[PartnerNode]:
    """The partner node of `sites`, all four services, in this process."""
    node = start_partner_node(sites.partner_node_config(throwaway_pki.tls("partner")))
    yield node
    node.stop(grace=None)
