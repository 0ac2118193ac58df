"""The audit log over both stores: round trip, group commit, idempotency, windows, bad records."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import grpc
import pytest

from cobrand.errors import AlreadyExists, CobrandError, InvalidRequest, Unavailable
from gateway.audit_json import CorruptAuditRecord, record_from_json, record_to_json
from gateway.audit_log import AuditLog, AuditSettings, GroupCommitStats, open_audit_log
from gateway.audit_record import (
    ApplicationInputs,
    AuditRecord,
    InvalidAuditRecord,
    PartnerSliceStatus,
    Pseudonym,
)
from gateway.audit_sqlite import SqliteAuditStore
from gateway.audit_store import ApplicationIdReused, EncodedRecord
from gateway.config import Decision
from tests.gateway.audit_records import T0, make_inputs, make_record


def _all(log: AuditLog) -> list[AuditRecord]:
    return log.query(T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=1))


def test_a_recorded_decision_reads_back_identically(audit_settings: AuditSettings) -> None:
    record = make_record("APP-RT", embedding=(0.1, -2.75, 1e-3))
    with open_audit_log(audit_settings) as log:
        assert log.record(record) == record
        assert log.get(record.request_id) == record
        assert log.find_application(record.inputs) == record
    with open_audit_log(audit_settings) as reopened:
        assert reopened.get(record.request_id) == record
        assert reopened.get(str(uuid.uuid4())) is None


def test_a_decline_without_bands_offers_or_partner_reads_back_identically(
    audit_settings: AuditSettings,
) -> None:
    approved = make_record("APP-DECLINE", embedding=None)
    declined = dataclasses.replace(
        approved,
        result=dataclasses.replace(
            approved.result,
            decision=Decision.DECLINE,
            score_band="",
            limit_band="",
            credit_limit_minor=0,
            packages=(),
            instalment=None,
            rule_hits=(),
        ),
    )
    with open_audit_log(audit_settings) as log:
        log.record(declined)
        assert log.get(declined.request_id) == declined


def test_concurrent_records_share_few_transactions_and_all_are_durable(
    audit_settings: AuditSettings,
) -> None:
    records = [make_record(f"APP-{i:04d}") for i in range(200)]
    start = threading.Barrier(len(records))

    def record(rec: AuditRecord) -> AuditRecord:
        start.wait()
        return log.record(rec)

    with open_audit_log(audit_settings) as log, ThreadPoolExecutor(len(records)) as pool:
        acknowledged = list(pool.map(record, records))
        stats = log.stats()
    assert acknowledged == records
    assert stats.records == len(records)
    # One transaction (one flush) per batch: 200 simultaneous callers need far fewer.
    assert stats.batches <= len(records) // 4, stats
    with open_audit_log(audit_settings) as reopened:
        assert {r.request_id for r in _all(reopened)} == {r.request_id for r in records}


def test_one_commit_per_record_when_batches_are_limited_to_one(
    audit_settings: AuditSettings,
) -> None:
    records = [make_record(f"APP-{i}") for i in range(20)]
    settings = audit_settings.model_copy(update={"max_batch": 1})
    with open_audit_log(settings) as log, ThreadPoolExecutor(8) as pool:
        list(pool.map(log.record, records))
        assert log.stats().batches == len(records)


def test_the_same_application_sent_again_gets_the_recorded_decision(
    audit_settings: AuditSettings,
) -> None:
    first = make_record("APP-IDEM")
    retry = make_record("APP-IDEM")  # same inputs, a new request id
    with open_audit_log(audit_settings) as log:
        assert log.find_application(first.inputs) is None
        log.record(first)
        assert log.find_application(retry.inputs) == first
        # A retry that raced past the lookup is answered with the first decision too.
        assert log.record(retry) == first
        assert log.get(retry.request_id) is None


def test_an_application_id_reused_with_different_inputs_is_refused(
    audit_settings: AuditSettings,
) -> None:
    first = make_record("APP-REUSE")
    other = make_record("APP-REUSE", fields={"income": 99000.0, "age": 35.0})
    with open_audit_log(audit_settings) as log:
        log.record(first)
        with pytest.raises(ApplicationIdReused, match="'application_id'") as found:
            log.find_application(other.inputs)
        assert found.value.status is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ApplicationIdReused, match="APP-REUSE"):
            log.record(other)
        assert _all(log) == [first]


def test_two_gateways_racing_on_one_application_record_one_decision(
    audit_settings: AuditSettings,
) -> None:
    racers = [make_record("APP-RACE") for _ in range(2)]
    with open_audit_log(audit_settings) as a, open_audit_log(audit_settings) as b:
        start = threading.Barrier(2)

        def record(log: AuditLog, rec: AuditRecord) -> AuditRecord:
            start.wait()
            return log.record(rec)

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(record, (a, b), racers))
        assert answers[0] == answers[1]
        assert answers[0] in racers
        assert len(_all(a)) == 1


def test_a_request_id_already_recorded_is_refused(audit_settings: AuditSettings) -> None:
    first = make_record("APP-A")
    clash = make_record("APP-B")
    object.__setattr__(clash, "request_id", first.request_id)
    with open_audit_log(audit_settings) as log:
        log.record(first)
        with pytest.raises(AlreadyExists, match=first.request_id):
            log.record(clash)


def test_a_batch_keeps_its_good_records_when_one_is_refused(audit_settings: AuditSettings) -> None:
    first = make_record("APP-1")
    batch = [
        make_record("APP-2"),
        make_record("APP-1", fields={"income": 1.0}),
        make_record("APP-3"),
    ]
    # A long linger gathers the three into one transaction.
    settings = audit_settings.model_copy(update={"max_batch": 3, "linger_ms": 100.0})
    with open_audit_log(settings) as log, ThreadPoolExecutor(3) as pool:
        log.record(first)
        answers = [pool.submit(log.record, rec) for rec in batch]
        assert answers[0].result() == batch[0]
        with pytest.raises(ApplicationIdReused):
            answers[1].result()
        assert answers[2].result() == batch[2]
        assert log.stats().batches == 2
        assert {r.application_id for r in _all(log)} == {"APP-1", "APP-2", "APP-3"}


def test_a_query_returns_the_window_oldest_first_by_version(
    audit_settings: AuditSettings,
) -> None:
    hour = dt.timedelta(hours=1)
    records = [
        make_record(f"APP-{i}", decided_at=T0 + i * hour, model_version=f"v{1 + i % 2}")
        for i in range(6)
    ]
    with open_audit_log(audit_settings) as log:
        for rec in reversed(records):
            log.record(rec)
        assert log.query(T0 + hour, T0 + 4 * hour) == records[1:4]
        assert log.query(T0, T0 + 6 * hour, model_version="v1") == records[0::2]
        assert log.query(T0, T0 + 6 * hour, limit=2) == records[:2]
        # The window is in absolute time, whatever the offset it is given in.
        shanghai = dt.timezone(dt.timedelta(hours=8))
        assert log.query(T0.astimezone(shanghai), (T0 + hour).astimezone(shanghai)) == records[:1]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"probability": math.nan}, "result.probability_of_default"),
        ({"probability": 1.5}, "result.probability_of_default"),
        ({"fields": {"income": math.inf}}, "fields['income']"),
        ({"embedding": (0.1, math.nan)}, "partner_embedding[1]"),
    ],
)
def test_a_record_holding_nan_or_out_of_range_values_is_refused_naming_the_field(
    change: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidAuditRecord, match=field.replace("[", r"\[")) as refused:
        make_record(**change)  # type: ignore[arg-type]
    assert isinstance(refused.value, InvalidRequest)


def test_a_partner_status_that_disagrees_with_the_slices_used_is_refused() -> None:
    record = make_record(embedding=None)
    with pytest.raises(InvalidAuditRecord, match="partner_embedding"):
        dataclasses.replace(record, partner_status=PartnerSliceStatus.USED)


def test_a_stored_record_altered_outside_the_log_is_reported_corrupt() -> None:
    record = make_record()
    text = record_to_json(record)
    assert record_from_json(text) == record
    with pytest.raises(CorruptAuditRecord):
        record_from_json(text.replace('"caller":"urn:cobrand:', '"caller":"'))
    with pytest.raises(CorruptAuditRecord):
        record_from_json(text.replace('"format":2', '"format":99'))


def test_a_raw_identifier_is_not_a_pseudonym_and_is_not_echoed() -> None:
    with pytest.raises(InvalidAuditRecord) as refused:
        Pseudonym("13800138000")
    assert "13800138000" not in str(refused.value)
    with pytest.raises(InvalidAuditRecord, match="applicant"):
        ApplicationInputs(
            application_id="APP-1",
            channel="bank",  # type: ignore[arg-type]
            identifier_kind="mobile_cn",
            applicant="13800138000",  # type: ignore[arg-type]
            partner_lookup_consent=False,
            fields={},
        )


def test_the_input_digest_covers_every_field_but_not_their_order() -> None:
    base = make_inputs(fields={"income": 1.0, "education": "university"})
    assert make_inputs(fields={"education": "university", "income": 1}).digest == base.digest
    assert make_inputs(fields={"income": 1.0, "education": "school"}).digest != base.digest
    assert make_inputs("APP-OTHER", fields=dict(base.fields)).digest != base.digest


def test_a_closed_log_refuses_new_records(tmp_path: Path) -> None:
    log = open_audit_log(AuditSettings(path=tmp_path / "audit.db"))
    log.close()
    with pytest.raises(Unavailable):
        log.record(make_record())


def test_a_record_the_store_cannot_take_in_time_is_not_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    stuck, late = make_record("APP-STUCK"), make_record("APP-LATE")
    with (
        open_audit_log(AuditSettings(path=db)) as log,
        ThreadPoolExecutor(1) as pool,
        (tmp_path / "audit.db-writer.lock").open("ab") as turn,
    ):
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock, as another writer would
        # Its caller leads a flush that takes the writers' turn, then waits for the lock.
        leading = pool.submit(log.record, stuck)
        while _turn_is_free(turn):
            time.sleep(0.005)
        with pytest.raises(Unavailable, match="did not confirm"):
            log.record(late, timeout_s=0.2)
        blocker.execute("ROLLBACK")
        blocker.close()
        assert leading.result() == stuck
        # Withdrawn before any flush took it: never written, so a retry decides it anew.
        assert log.find_application(late.inputs) is None
        retry = make_record("APP-LATE")
        assert log.record(retry) == retry


def _turn_is_free(turn: BinaryIO) -> bool:
    try:
        fcntl.flock(turn, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(turn, fcntl.LOCK_UN)
    return True


class _FailingStore(SqliteAuditStore):
    """A SQLite store whose next batch fails as a full disk would fail it."""

    fail_next = False

    def write_batch(self, batch: Sequence[EncodedRecord]) -> list[AuditRecord | CobrandError]:
        if self.fail_next:
            self.fail_next = False
            raise sqlite3.OperationalError("database or disk is full")
        return super().write_batch(batch)


def test_a_batch_the_store_fails_fails_each_of_its_callers_and_the_log_writes_on(
    tmp_path: Path,
) -> None:
    store = _FailingStore(tmp_path / "audit.db")
    store.fail_next = True
    batch = [make_record(f"APP-{i}") for i in range(3)]
    # A long linger gathers the three into one transaction.
    with AuditLog(store, max_batch=3, linger_s=0.1) as log, ThreadPoolExecutor(3) as pool:
        answers = [pool.submit(log.record, rec) for rec in batch]
        for answer in answers:
            with pytest.raises(Unavailable, match="could not write"):
                answer.result()
        assert _all(log) == []
        again = make_record("APP-0")
        assert log.record(again) == again
        assert log.stats() == GroupCommitStats(records=1, batches=1)


def test_the_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    open_audit_log(AuditSettings(path=db)).close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"backend": "sqlite"}, "needs 'path'"),
        ({"backend": "postgres"}, "needs 'dsn'"),
        ({"backend": "postgres", "dsn": "x", "path": "a.db"}, "does not use 'path'"),
    ],
)
def test_audit_settings_name_the_missing_or_misplaced_store(
    settings: dict[str, str], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        AuditSettings(**settings)  # type: ignore[arg-type]
