"""Private alignment end to end, in one process: the bank's initiator against the partner's
responder, with each party's own files, loader and store. (Over gRPC: tests/test_alignment_rpc.py.)
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from bank_node.psi_initiator import run_alignment
from cobrand import psi
from cobrand.alignment_protocol import (
    CommitReply,
    MatchChunk,
    OpenReply,
    OpenRequest,
    PointChunk,
    PsiSettings,
)
from cobrand.alignment_store import AlignmentStore
from cobrand.errors import FailedPrecondition, InvalidPoint, InvalidRequest, NotFound, TableError
from cobrand.schema import load_party_schema
from cobrand.tables import load_party_table
from partner_node.psi_responder import PsiResponder
from tests.alignment_data import (
    FEDERATION,
    canonical_phones,
    messy,
    plain_canonical,
    write_party,
)

SMALL_CHUNKS = PsiSettings(workers=0, chunk_points=64)


@dataclass(frozen=True)
class Parties:
    bank_ids: npt.NDArray[np.object_]
    partner_ids: npt.NDArray[np.object_]
    bank_dir: Path
    partner_dir: Path


def _draws_with_duplicates(rng: random.Random, pool: list[str], count: int) -> list[str]:
    """`count` messy spellings drawn with replacement: some people appear twice, spelt apart."""
    return [messy(rng.choice(pool), rng) for _ in range(count)]


def _first_spelling_of_each(raw: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for value in raw:
        seen.setdefault(plain_canonical(value), value)
    return list(seen.values())


def _load(directory: Path, party: str, raw: list[str]) -> npt.NDArray[np.object_]:
    files = write_party(directory, party, raw)
    return load_party_table(load_party_schema(files.schema, FEDERATION), files.table).ids


def _parties(tmp_path: Path, seed: int, n_bank: int, n_partner: int, n_common: int) -> Parties:
    rng = random.Random(seed)
    people = canonical_phones(rng, n_bank + n_partner - n_common)
    rng.shuffle(people)
    bank_people = people[:n_bank]
    partner_people = people[n_bank - n_common :]
    bank_raw = _first_spelling_of_each(_draws_with_duplicates(rng, bank_people, 2 * n_bank))
    partner_raw = _first_spelling_of_each(
        _draws_with_duplicates(rng, partner_people, 2 * n_partner)
    )
    return Parties(
        bank_ids=_load(tmp_path / "bank-files", "bank", bank_raw),
        partner_ids=_load(tmp_path / "partner-files", "partner", partner_raw),
        bank_dir=tmp_path / "bank-data",
        partner_dir=tmp_path / "partner-data",
    )


def _align(parties: Parties, settings: PsiSettings = SMALL_CHUNKS) -> None:
    responder = PsiResponder(FEDERATION, parties.partner_ids, parties.partner_dir, settings)
    run_alignment(FEDERATION, parties.bank_ids, responder, parties.bank_dir, settings)


def _members(directory: Path) -> list[tuple[bytes, str]]:
    with AlignmentStore(directory) as store:
        return [
            (key.tobytes(), str(identifier))
            for keys, ids in store.members()
            for key, identifier in zip(keys, ids, strict=True)
        ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_both_sides_hold_the_plain_intersection_in_the_same_order(
    tmp_path: Path, seed: int
) -> None:
    parties = _parties(tmp_path, seed, n_bank=300, n_partner=500, n_common=120)
    bank_set = {plain_canonical(i) for i in parties.bank_ids}
    partner_set = {plain_canonical(i) for i in parties.partner_ids}

    _align(parties)

    bank, partner = _members(parties.bank_dir), _members(parties.partner_dir)
    assert [key for key, _ in bank] == [key for key, _ in partner]
    assert [key for key, _ in bank] == sorted(key for key, _ in bank)
    # Row i of both results is the same person: the join key pairs each side's own id.
    assert [identifier for _, identifier in bank] == [identifier for _, identifier in partner]
    assert {identifier for _, identifier in bank} == bank_set & partner_set
    with AlignmentStore(parties.bank_dir) as b, AlignmentStore(parties.partner_dir) as p:
        assert b.summary.run_id == p.summary.run_id
        assert b.summary.intersection_digest == p.summary.intersection_digest
        assert (b.summary.own_rows, b.summary.peer_rows) == (
            p.summary.peer_rows,
            p.summary.own_rows,
        )


def test_a_table_that_names_a_person_twice_is_refused_before_any_alignment(
    tmp_path: Path,
) -> None:
    rng = random.Random(4)
    person = canonical_phones(rng, 1)[0]
    raw = [messy(person, rng), *canonical_phones(rng, 5), messy(person, rng)]

    with pytest.raises(TableError, match="data row 7: identifier repeats the one in data row 1"):
        _load(tmp_path, "bank", raw)


def test_disjoint_sets_commit_an_empty_intersection_on_both_sides(tmp_path: Path) -> None:
    parties = _parties(tmp_path, 5, n_bank=40, n_partner=50, n_common=0)

    _align(parties)

    assert _members(parties.bank_dir) == _members(parties.partner_dir) == []


def test_join_keys_are_neither_the_identifiers_nor_their_hashes_and_change_every_run(
    tmp_path: Path,
) -> None:
    parties = _parties(tmp_path, 6, n_bank=50, n_partner=50, n_common=50)
    domain = psi.domain_tag(FEDERATION)

    _align(parties)
    first = dict(_members(parties.bank_dir))
    _align(parties)
    second = dict(_members(parties.bank_dir))

    assert sorted(first.values()) == sorted(second.values())
    assert not set(first) & set(second)
    for key, identifier in first.items():
        assert key not in psi.hash_to_point(identifier, domain)
        assert key != hashlib.sha256(identifier.encode()).digest()[:16]


def test_a_rerun_replaces_both_results(tmp_path: Path) -> None:
    parties = _parties(tmp_path, 7, n_bank=60, n_partner=60, n_common=30)
    _align(parties)
    smaller = replace(parties, bank_ids=parties.bank_ids[:20])

    _align(smaller)

    with AlignmentStore(parties.bank_dir) as b, AlignmentStore(parties.partner_dir) as p:
        assert b.summary.run_id == p.summary.run_id
        assert b.summary.own_rows == p.summary.peer_rows == 20


# --- A partner that breaks the protocol: the bank refuses and keeps its previous result -------


class _Tampering:
    """The real responder behind a proxy that alters one kind of answer."""

    def __init__(self, responder: PsiResponder, *, answers: str = "", commit: str = "") -> None:
        self._responder = responder
        self._answers = answers
        self._commit = commit

    def open(self, request: OpenRequest) -> OpenReply:
        return self._responder.open(request)

    def reblind(self, chunks: Iterator[PointChunk]) -> Iterator[PointChunk]:
        for answer in self._responder.reblind(chunks):
            if self._answers == "drop a point" and answer.sequence == 1:
                answer = replace(answer, points=answer.points[psi.POINT_BYTES :])
            elif self._answers == "repeat a point" and answer.sequence == 0:
                answer = replace(answer, points=answer.points[:32] * 2 + answer.points[64:])
            yield answer

    def fetch(self, run_id: str) -> Iterator[PointChunk]:
        for chunk in self._responder.fetch(run_id):
            if self._answers == "low-order point" and chunk.sequence == 0:
                chunk = replace(chunk, points=(1).to_bytes(32, "little") + chunk.points[32:])
            yield chunk

    def commit(self, chunks: Iterator[MatchChunk]) -> CommitReply:
        reply = self._responder.commit(chunks)
        if self._commit == "other digest":
            reply = replace(reply, intersection_digest=bytes(32))
        return reply


@pytest.mark.parametrize(
    ("answers", "commit", "error", "message"),
    [
        ("drop a point", "", InvalidRequest, "chunk 1 holds 2016 bytes for 64 points"),
        ("repeat a point", "", InvalidRequest, "1 repeat another"),
        ("low-order point", "", InvalidPoint, "chunk 0: point 0 has low order"),
        ("", "other digest", FailedPrecondition, "the bank keeps its previous result"),
    ],
)
def test_a_partner_breaking_the_protocol_leaves_the_bank_result_untouched(
    tmp_path: Path, answers: str, commit: str, error: type[Exception], message: str
) -> None:
    parties = _parties(tmp_path, 8, n_bank=200, n_partner=200, n_common=100)
    _align(parties)
    with AlignmentStore(parties.bank_dir) as store:
        previous = store.summary.run_id
    responder = PsiResponder(FEDERATION, parties.partner_ids, parties.partner_dir, SMALL_CHUNKS)
    peer = _Tampering(responder, answers=answers, commit=commit)

    with pytest.raises(error, match=message):
        run_alignment(FEDERATION, parties.bank_ids, peer, parties.bank_dir, SMALL_CHUNKS)

    with AlignmentStore(parties.bank_dir) as store:
        assert store.summary.run_id == previous
    _align(parties)  # and a rerun works


def test_a_bank_sending_one_identifier_twice_is_refused_by_the_partner(tmp_path: Path) -> None:
    parties = _parties(tmp_path, 9, n_bank=100, n_partner=100, n_common=50)
    repeated = np.concatenate([parties.bank_ids, parties.bank_ids[:1]])
    responder = PsiResponder(FEDERATION, parties.partner_ids, parties.partner_dir, SMALL_CHUNKS)

    with pytest.raises(InvalidRequest, match="1 points repeat an earlier point"):
        run_alignment(FEDERATION, repeated, responder, parties.bank_dir, SMALL_CHUNKS)

    with pytest.raises(NotFound):
        AlignmentStore(parties.partner_dir)
