"""The partner's responder driven step by step by a hand-made bank: one run at a time, each step
once and in order, and a commit that names only what the partner re-blinded in this run.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from cobrand import psi
from cobrand.alignment_protocol import (
    MatchChunk,
    OpenRequest,
    PointChunk,
    PsiSettings,
    join_key_array,
)
from cobrand.alignment_store import JOIN_KEY_DTYPE, AlignmentStore
from cobrand.errors import ConfigError, FailedPrecondition, InvalidRequest, NotFound
from partner_node.psi_responder import PsiResponder
from tests.alignment_data import FEDERATION

DOMAIN = psi.domain_tag(FEDERATION)
PARTNER_IDS = np.array([f"+8613800000{i:03d}" for i in range(100)], dtype=object)
BANK_IDS = [f"+8613800000{i:03d}" for i in range(50, 130)]  # 50 in common
SETTINGS = PsiSettings(workers=0, chunk_points=32)


@dataclass
class Bank:
    """The bank's half of a run, by hand: its secret, its points, what came back."""

    run_id: str
    secret: bytes
    reblinded: bytes = b""


def _responder(tmp_path: Path) -> PsiResponder:
    return PsiResponder(FEDERATION, PARTNER_IDS, tmp_path / "partner-data", SETTINGS)


def _open(responder: PsiResponder, size: int = len(BANK_IDS)) -> Bank:
    bank = Bank(str(uuid.uuid4()), psi.new_secret())
    responder.open(
        OpenRequest(
            bank.run_id, psi.PROTOCOL_VERSION, FEDERATION.federation_id, FEDERATION.digest(), size
        )
    )
    return bank


def _point_chunks(run_id: str, points: bytes, per_chunk: int = 32) -> Iterator[PointChunk]:
    step = per_chunk * psi.POINT_BYTES
    starts = range(0, len(points), step)
    for sequence, start in enumerate(starts):
        yield PointChunk(
            run_id, sequence, points[start : start + step], sequence == len(starts) - 1
        )


def _reblind(responder: PsiResponder, bank: Bank) -> None:
    points = psi.blind(psi.hash_to_points(BANK_IDS, DOMAIN), bank.secret)
    bank.reblinded = b"".join(
        c.points for c in responder.reblind(_point_chunks(bank.run_id, points))
    )


def _matches(
    responder: PsiResponder, bank: Bank
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.void]]:
    """Positions and join keys of the partner's points that match, as an honest bank finds them."""
    theirs = b"".join(c.points for c in responder.fetch(bank.run_id))
    keys = join_key_array(psi.blind(theirs, bank.secret), DOMAIN)
    ours = set(psi.join_keys(bank.reblinded, DOMAIN))
    hits = np.array([i for i, k in enumerate(keys) if k.tobytes() in ours], dtype=np.uint64)
    return hits, keys[hits.astype(np.int64)]


def _commit_chunks(
    run_id: str, positions: npt.NDArray[np.uint64], keys: npt.NDArray[np.void]
) -> Iterator[MatchChunk]:
    yield MatchChunk(run_id, 0, positions[:30], keys[:30], last=False)
    yield MatchChunk(run_id, 1, positions[30:], keys[30:], last=True)


def test_an_honest_run_persists_the_intersection_as_the_partners_own_ids(tmp_path: Path) -> None:
    responder = _responder(tmp_path)
    bank = _open(responder)
    _reblind(responder, bank)
    positions, keys = _matches(responder, bank)

    reply = responder.commit(_commit_chunks(bank.run_id, positions, keys))

    assert reply.intersection_size == 50
    with AlignmentStore(tmp_path / "partner-data") as store:
        ids = [i for _, batch in store.members() for i in batch]
        assert sorted(ids) == list(PARTNER_IDS[50:])
        assert store.summary.intersection_digest == reply.intersection_digest
    assert responder.open_run_id is None


def test_the_partner_shuffles_its_points_afresh_every_run(tmp_path: Path) -> None:
    responder = _responder(tmp_path)
    orders = []
    for _ in range(2):
        bank = _open(responder)
        _reblind(responder, bank)
        orders.append(_matches(responder, bank)[0].tolist())

    assert orders[0] != orders[1]
    assert len(orders[0]) == len(orders[1]) == 50


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("unknown key", "chunk 1 match 0 has a join key the partner never re-blinded in this run"),
        ("descending", "chunk 1 positions are not strictly ascending across the stream"),
        ("out of range", "chunk 1 names position 100; the partner sent 100 points"),
        ("one key twice", "a join key is claimed by two positions"),
    ],
)
def test_a_commit_naming_what_the_partner_never_sent_or_saw_is_refused(
    tmp_path: Path, tamper: str, message: str
) -> None:
    responder = _responder(tmp_path)
    bank = _open(responder)
    _reblind(responder, bank)
    positions, keys = _matches(responder, bank)
    positions, keys = positions.copy(), keys.copy()
    if tamper == "unknown key":
        keys[30] = np.frombuffer(bytes(range(16)), dtype=JOIN_KEY_DTYPE)[0]
    elif tamper == "descending":
        positions[30] = positions[29]
    elif tamper == "out of range":
        positions[-1] = len(PARTNER_IDS)
    else:
        keys[31] = keys[30]

    with pytest.raises(InvalidRequest, match=message):
        responder.commit(_commit_chunks(bank.run_id, positions, keys))

    assert responder.open_run_id is None
    assert not (tmp_path / "partner-data").exists()


def test_each_step_runs_once_and_in_order(tmp_path: Path) -> None:
    responder = _responder(tmp_path)
    bank = _open(responder)
    empty_commit = [
        MatchChunk(bank.run_id, 0, np.empty(0, np.uint64), np.empty(0, JOIN_KEY_DTYPE), True)
    ]

    with pytest.raises(FailedPrecondition, match="this step needs a run that has re-blinded"):
        list(responder.fetch(bank.run_id))
    with pytest.raises(FailedPrecondition, match="this step needs a run that has sent its own"):
        responder.commit(iter(empty_commit))
    _reblind(responder, bank)
    with pytest.raises(
        FailedPrecondition,
        match="the partner has re-blinded the bank's points; this step needs a run that has opened",
    ):
        _reblind(responder, bank)


def test_a_new_run_replaces_an_unfinished_one(tmp_path: Path) -> None:
    responder = _responder(tmp_path)
    old = _open(responder)
    _reblind(responder, old)

    new = _open(responder)

    assert responder.open_run_id == new.run_id
    with pytest.raises(NotFound, match=f"alignment run '{old.run_id}' is not open"):
        list(responder.fetch(old.run_id))


def test_a_stream_closed_midway_abandons_the_run(tmp_path: Path) -> None:
    responder = _responder(tmp_path)
    bank = _open(responder)
    points = psi.blind(psi.hash_to_points(BANK_IDS, DOMAIN), bank.secret)
    answers = responder.reblind(_point_chunks(bank.run_id, points))
    assert isinstance(answers, Generator)

    next(answers)
    answers.close()  # what gRPC does when the bank goes away

    assert responder.open_run_id is None


def test_more_points_than_announced_are_refused_before_they_are_reblinded(tmp_path: Path) -> None:
    responder = _responder(tmp_path)
    bank = _open(responder, size=40)
    points = psi.blind(psi.hash_to_points(BANK_IDS, DOMAIN), bank.secret)
    answers = responder.reblind(_point_chunks(bank.run_id, points))

    assert len(next(answers).points) == 32 * psi.POINT_BYTES
    with pytest.raises(InvalidRequest, match="chunk 1 brings the stream to 64 points; 40 were"):
        next(answers)


def test_a_partner_without_identifiers_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the partner has no identifiers to align"):
        PsiResponder(FEDERATION, np.empty(0, dtype=object), tmp_path, SETTINGS)


def test_the_next_step_may_start_as_soon_as_the_last_answer_arrives(tmp_path: Path) -> None:
    responder = _responder(tmp_path)
    bank = _open(responder)
    points = psi.blind(psi.hash_to_points(BANK_IDS, DOMAIN), bank.secret)
    answers = responder.reblind(_point_chunks(bank.run_id, points))
    # Read up to the last answer only: the bank's side of the stream is not closed yet.
    while not next(answers).last:
        pass

    fetched = responder.fetch(bank.run_id)
    while not next(fetched).last:
        pass

    empty = MatchChunk(bank.run_id, 0, np.empty(0, np.uint64), np.empty(0, JOIN_KEY_DTYPE), True)
    assert responder.commit([empty]).intersection_size == 0
