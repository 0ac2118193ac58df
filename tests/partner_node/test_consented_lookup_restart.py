"""The partner node's consented lookup across restarts, over mutual TLS on loopback: a restarted
node answers from its saved OPRF index without building it; a rotated key, a changed table or a
damaged file is named, rebuilt and replaced, and the answers are right for what the node serves
now; only the consent record of a lookup is flushed to disk."""

from __future__ import annotations

import json
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cobrand import oprf
from cobrand.durable import append_line
from cobrand.federation import load_federation
from cobrand.rpc import create_channel
from cobrand.v1 import consented_lookup_pb2, consented_lookup_pb2_grpc, embedding_pb2
from partner_node import consented_lookup_service, oprf_index
from partner_node.consented_lookup_service import CONSENTED_LOOKUP_AUDIT_FILE
from partner_node.oprf_index import OPRF_KEY_FILE, OprfIndex
from partner_node.oprf_index_file import OPRF_INDEX_FILE
from tests.conftest import ThrowAwayPki
from tests.partner_node.embedding_sites import PublishedVersion, partner_table, publish_version
from tests.training_sites import TrainingSites, running_partner, write_training_sites

TIMEOUT = 60.0
LOADED = "partner users' index loaded from"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainingSites, PublishedVersion]:
    sites = write_training_sites(tmp_path_factory.mktemp("restart"), customers=300, seed=11)
    return sites, publish_version(sites, seed=2, width=8)


@pytest.fixture
def sites(published: tuple[TrainingSites, PublishedVersion], tmp_path: Path) -> TrainingSites:
    """The module's sites with a partner data directory of this test's own (no key, no index)."""
    shared, _ = published
    own = TrainingSites(
        shared.files, shared.bank_data, tmp_path / "partner-data", shared.intersection
    )
    shutil.copytree(shared.partner_data, own.partner_data)
    return own


@pytest.fixture
def version(published: tuple[TrainingSites, PublishedVersion]) -> PublishedVersion:
    return published[1]


@pytest.fixture
def user(version: PublishedVersion) -> str:
    """A partner user; a consented lookup finds anyone in the partner's table."""
    return str(version.table.ids[len(version.table.ids) // 3])


def _never_built(*args: Any) -> OprfIndex:
    raise AssertionError("the index was built, not read from its saved file")


def _lookup(pki: ThrowAwayPki, port: int, sites: TrainingSites, version_id: str, user: str) -> Any:
    """A whole consented lookup of `user`, as the gateway makes it."""
    _, schema = partner_table(sites)
    domain = oprf.lookup_domain(load_federation(sites.files.federation))
    x = domain + oprf.lookup_input(schema.identifier.kind, user)
    r, blinded = oprf.blind(x)
    with create_channel(f"127.0.0.1:{port}", pki.tls("gateway")) as channel:
        stub: Any = consented_lookup_pb2_grpc.ConsentedLookupStub(channel)  # type: ignore[no-untyped-call]
        evaluated = stub.BlindEvaluate(
            consented_lookup_pb2.BlindEvaluateRequest(
                request_id="lookup-1", consent_reference="APP-1", blinded_element=blinded
            ),
            timeout=TIMEOUT,
        ).evaluated_element
        return stub.GetConsentedEmbedding(
            consented_lookup_pb2.GetConsentedEmbeddingRequest(
                request_id="lookup-1",
                consent_reference="APP-1",
                model_version=version_id,
                oprf_output=oprf.lookup_output(oprf.finalize(x, r, evaluated)),
            ),
            timeout=TIMEOUT,
        )


def _assert_found(reply: Any, version: PublishedVersion, user: str) -> None:
    assert reply.status == embedding_pb2.LOOKUP_STATUS_FOUND
    np.testing.assert_allclose(reply.embedding, version.expected([user])[0], rtol=1e-5, atol=1e-6)


def _served_once(pki: ThrowAwayPki, sites: TrainingSites, version: PublishedVersion) -> Path:
    """Start the node, have it build and save its index with a lookup, stop it."""
    with running_partner(pki, sites) as node:
        _lookup(pki, node.port, sites, version.version_id, str(version.table.ids[0]))
    saved = sites.partner_data / OPRF_INDEX_FILE
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    return saved


def _wait_for(caplog: pytest.LogCaptureFixture, text: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while text not in caplog.text:
        assert time.monotonic() < deadline, f"no log line {text!r} within {TIMEOUT} s"
        time.sleep(0.02)


def test_a_restarted_node_answers_from_its_saved_index_without_building_it(
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    version: PublishedVersion,
    user: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved = _served_once(throwaway_pki, sites, version)
    written = saved.stat()
    monkeypatch.setattr(oprf_index, "build_index", _never_built)

    with (
        caplog.at_level("INFO", logger=oprf_index.__name__),
        running_partner(throwaway_pki, sites) as node,
    ):
        # Read at the start, before any lookup asks for it.
        _wait_for(caplog, f"{LOADED} {saved}")
        reply = _lookup(throwaway_pki, node.port, sites, version.version_id, user)

    _assert_found(reply, version, user)
    assert (saved.stat().st_mtime_ns, saved.stat().st_ino) == (written.st_mtime_ns, written.st_ino)
    assert "indexed in" not in caplog.text


def test_a_rotated_key_is_named_and_the_index_rebuilt_under_it(
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    version: PublishedVersion,
    user: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved = _served_once(throwaway_pki, sites, version)
    before = saved.stat().st_ino
    # Rotating the key: replacing its file (here by a new one made at the start).
    (sites.partner_data / OPRF_KEY_FILE).unlink()

    with running_partner(throwaway_pki, sites) as node:
        reply = _lookup(throwaway_pki, node.port, sites, version.version_id, user)

    _assert_found(reply, version, user)
    assert f"{saved}: the saved OPRF index was computed under another OPRF key" in caplog.text
    assert saved.stat().st_ino != before
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600


def test_a_reordered_table_is_named_and_each_user_found_at_their_new_row(
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    version: PublishedVersion,
    user: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved = _served_once(throwaway_pki, sites, version)
    # The same users, rows reversed: an index of the old table would answer with another user.
    header, *rows = sites.files.partner_table.read_text().splitlines()
    reordered = tmp_path / "partner-reordered.csv"
    reordered.write_text("\n".join([header, *reversed(rows)]) + "\n")

    with running_partner(throwaway_pki, sites, table=reordered) as node:
        reply = _lookup(throwaway_pki, node.port, sites, version.version_id, user)

    _assert_found(reply, version, user)
    assert f"{saved}: the saved OPRF index was computed from another partner table" in caplog.text


def test_a_truncated_index_is_named_rebuilt_and_replaced_owner_only(
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    version: PublishedVersion,
    user: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved = _served_once(throwaway_pki, sites, version)
    whole = saved.read_bytes()
    saved.write_bytes(whole[: len(whole) // 2])

    with running_partner(throwaway_pki, sites) as node:
        reply = _lookup(throwaway_pki, node.port, sites, version.version_id, user)

    _assert_found(reply, version, user)
    assert f"{saved}: the saved OPRF index is {len(whole) // 2} bytes" in caplog.text
    assert "truncated" in caplog.text
    assert len(saved.read_bytes()) == len(whole)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600


def test_a_lookup_flushes_its_consent_record_to_disk_and_only_writes_its_outcome(
    throwaway_pki: ThrowAwayPki,
    sites: TrainingSites,
    version: PublishedVersion,
    user: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    appended: list[tuple[str, bool]] = []

    def noting_append(path: Path, line: str, *, sync: bool = True) -> None:
        appended.append((json.loads(line)["call"], sync))
        append_line(path, line, sync=sync)

    monkeypatch.setattr(consented_lookup_service, "append_line", noting_append)

    with running_partner(throwaway_pki, sites) as node:
        _assert_found(
            _lookup(throwaway_pki, node.port, sites, version.version_id, user), version, user
        )

    assert appended == [("BlindEvaluate", True), ("GetConsentedEmbedding", False)]
    records = [
        json.loads(line)
        for line in (sites.partner_data / CONSENTED_LOOKUP_AUDIT_FILE).read_text().splitlines()
    ]
    assert [(r["call"], r["consent_reference"]) for r in records] == [
        ("BlindEvaluate", "APP-1"),
        ("GetConsentedEmbedding", "APP-1"),
    ]
    assert records[1]["found"] is True
