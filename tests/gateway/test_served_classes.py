"""A gateway names the rights packages by the served version's own class names: with the bank's
schema edited after training (its package classes reversed), an applicant is offered exactly
what the gateway serving the schema as trained offers. On the run's shared world."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bank_node.model_registry import load_bank_version
from cobrand.model_store import ModelStore
from gateway.server import Gateway
from partner_node.server import PartnerNode
from tests.conftest import ThrowAwayPki
from tests.gateway.gateway_sites import Applicants, World, gateway_settings, running_gateway
from tests.gateway.reordered_packages import reverse_package_classes
from tests.gateway.scoring_calls import TIMEOUT, application, scoring_stub, spelt


def test_a_schema_reordered_after_training_leaves_the_offered_packages_as_the_version_names(
    tmp_path: Path,
    throwaway_pki: ThrowAwayPki,
    world: World,
    partner_node: PartnerNode,
    gateway: Gateway,
    bank_app: Any,
    people: Applicants,
) -> None:
    settings = gateway_settings(
        tmp_path, world.sites, throwaway_pki, world.version_id, partner_node.port, deadline_ms=1000
    )
    classes = reverse_package_classes(settings.bank, tmp_path)
    offered: list[tuple[str, float]] = []

    with running_gateway(settings) as reordered, scoring_stub(throwaway_pki, reordered.port) as app:
        for i, person in enumerate(people.aligned[:8]):
            request = application(f"APP-classes-{i}", spelt(person))
            as_trained = bank_app.ScoreApplication(request, timeout=TIMEOUT)
            reply = app.ScoreApplication(request, timeout=TIMEOUT)
            assert reply.slices.partner_status == as_trained.slices.partner_status
            assert [(p.package, p.propensity) for p in reply.packages] == [
                (p.package, p.propensity) for p in as_trained.packages
            ]
            offered.extend((p.package, p.propensity) for p in reply.packages)

    served = load_bank_version(ModelStore(world.sites.bank_data / "models"), world.version_id)
    assert served.classes["rights_package"] == classes
    assert offered, "no applicant was offered a package: nothing was compared"
