"""Publishing the partner's half of a model version through the round hand-off (``PublishModel``)
on a real mutual-TLS loopback partner: the round the bank chose, from memory or, after a restart,
from its checkpoint file, into the partner's registry beside its runs directory."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from cobrand.model_manifest import ModelDigests, manifest_digest
from cobrand.model_store import ModelStore
from cobrand.rounds_protocol import ModelPublication
from cobrand.rounds_serde import partner_manifest_from_proto, publication_to_proto
from cobrand.weights import weights_digest
from partner_node.model_registry import load_partner_version
from tests.conftest import ThrowAwayPki
from tests.partner_node.test_rounds_service import PREPROCESSOR, TIMEOUT, _refusal
from tests.partner_node.test_training_runs_resume import Node, _node, _plan, _two_rounds

BANK_WEIGHTS = hashlib.sha256(b"bank weights").digest()
BANK_MANIFEST = hashlib.sha256(b"bank manifest").digest()


def _publication(
    run: str,
    round_number: int,
    partner_weights: bytes,
    *,
    preprocessor: bytes = PREPROCESSOR.digest(),
    bank_manifest: bytes = BANK_MANIFEST,
) -> ModelPublication:
    digests = ModelDigests.of(
        bank_weights=BANK_WEIGHTS,
        partner_weights=partner_weights,
        partner_preprocessor=preprocessor,
    )
    return ModelPublication(run, round_number, digests.version_id, digests, bank_manifest)


def _publish(node: Node, publication: ModelPublication) -> bytes:
    reply = node.rounds.PublishModel(publication_to_proto(publication), timeout=TIMEOUT)
    return partner_manifest_from_proto(reply, publication)


def _trained(node: Node, run: str) -> tuple[bytes, ...]:
    """Two rounds of `run` trained and the run closed as the bank does, round 1 the best."""
    digests = _two_rounds(node, run)
    node.plan(_plan(run, 3, digests[2], best_round=1))
    return digests


def test_the_chosen_round_is_saved_in_the_registry_and_its_manifest_digest_returned(
    throwaway_pki: ThrowAwayPki, tmp_path: Path
) -> None:
    with _node(throwaway_pki, tmp_path / "runs") as node:
        _, first, _ = _trained(node, "run-p")
        publication = _publication("run-p", 1, first)
        digest = _publish(node, publication)

    store = ModelStore(tmp_path / "models")
    version = load_partner_version(store, publication.version_id)

    assert store.versions() == [publication.version_id]
    assert digest == manifest_digest(store.load(publication.version_id).manifest)
    assert version.manifest.party == "partner"
    assert version.manifest.model == publication.digests
    assert version.manifest.peer_manifest_sha256 == BANK_MANIFEST.hex()
    assert weights_digest(version.bottom.state_dict()) == first
    assert version.preprocessor == PREPROCESSOR


def test_publishing_the_same_version_again_returns_the_same_digest(
    throwaway_pki: ThrowAwayPki, tmp_path: Path
) -> None:
    with _node(throwaway_pki, tmp_path / "runs") as node:
        _, first, _ = _trained(node, "run-q")
        publication = _publication("run-q", 1, first)
        digests = [_publish(node, publication) for _ in range(2)]
        other_bank_manifest = _refusal(
            node.rounds.PublishModel,
            publication_to_proto(
                _publication("run-q", 1, first, bank_manifest=hashlib.sha256(b"x").digest())
            ),
        )

    assert digests[0] == digests[1]
    assert other_bank_manifest.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is recorded already" in other_bank_manifest.details()


def test_a_restarted_partner_publishes_the_round_from_its_checkpoint_file(
    throwaway_pki: ThrowAwayPki, tmp_path: Path
) -> None:
    with _node(throwaway_pki, tmp_path / "runs") as before:
        _, first, _ = _trained(before, "run-r")
    publication = _publication("run-r", 1, first)

    with _node(throwaway_pki, tmp_path / "runs") as restarted:
        digest = _publish(restarted, publication)
        again = _publish(restarted, publication)

    version = load_partner_version(ModelStore(tmp_path / "models"), publication.version_id)
    assert digest == again == manifest_digest(version.manifest)
    assert weights_digest(version.bottom.state_dict()) == first


@contextmanager
def _trained_node(
    pki: ThrowAwayPki, runs_dir: Path, run: str, *, restarted: bool
) -> Iterator[tuple[Node, tuple[bytes, ...]]]:
    """A node that trained `run` (its digests beside it), or a new node over its files."""
    with _node(pki, runs_dir) as node:
        digests = _trained(node, run)
        if not restarted:
            yield node, digests
            return
    with _node(pki, runs_dir) as node:
        yield node, digests


@pytest.mark.parametrize("restarted", [False, True], ids=["held", "restarted"])
def test_a_round_with_other_weights_or_preprocessing_or_not_completed_is_refused_naming_it(
    throwaway_pki: ThrowAwayPki, tmp_path: Path, restarted: bool
) -> None:
    with _trained_node(throwaway_pki, tmp_path / "runs", "run-m", restarted=restarted) as (
        node,
        (initial, first, _),
    ):
        refusals = {
            expected: _refusal(node.rounds.PublishModel, publication_to_proto(publication))
            for expected, publication in {
                r"partner_weights_sha256": _publication("run-m", 1, initial),
                r"partner_preprocessor_sha256 names [0-9a-f]{12}, the run trained with": (
                    _publication("run-m", 1, first, preprocessor=hashlib.sha256().digest())
                ),
                r"round 5 has not completed|no checkpoint of round 5": (
                    _publication("run-m", 5, first)
                ),
                r"run-never/round-1.pt: no checkpoint of round 1": (
                    _publication("run-never", 1, first)
                ),
            }.items()
        }

    for expected, refused in refusals.items():
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert re.search(expected, refused.details()), refused.details()
    assert ModelStore(tmp_path / "models").versions() == []


def test_a_malformed_publication_is_refused_naming_the_field(
    throwaway_pki: ThrowAwayPki, tmp_path: Path
) -> None:
    with _node(throwaway_pki, tmp_path / "runs") as node:
        _, first, _ = _trained(node, "run-v")
        request = publication_to_proto(_publication("run-v", 1, first))
        request.bank_manifest_sha256 = b"short"
        truncated = _refusal(node.rounds.PublishModel, request)
        request = publication_to_proto(_publication("run-v", 1, first))
        request.version_id = "0123456789abcdef"
        other_id = _refusal(node.rounds.PublishModel, request)

    assert truncated.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bank_manifest_sha256 is 5 bytes" in truncated.details()
    assert other_id.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "version_id '0123456789abcdef' is not the id of the digests" in other_id.details()
