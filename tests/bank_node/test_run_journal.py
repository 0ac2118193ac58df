"""The run journal: events read back in order as strict JSON; a line cut by a kill is dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from bank_node.run_journal import RunJournal, read_journal
from cobrand.errors import FailedPrecondition


def test_events_read_back_in_order_with_digests_as_hex_and_non_finite_values_as_null(
    tmp_path: Path,
) -> None:
    journal = RunJournal(tmp_path / "runs" / "7.jsonl")
    journal.write("planned", round=1, digest=b"\x01\xff")
    journal.write("committed", round=1, valid={"risk": {"auc": 0.7, "ks": float("nan")}})

    events = read_journal(journal.path)

    assert [e["event"] for e in events] == ["planned", "committed"]
    assert events[0]["digest"] == "01ff"
    assert events[1]["valid"] == {"risk": {"auc": 0.7, "ks": None}}
    assert "NaN" not in journal.path.read_text()


def test_a_last_line_cut_short_by_a_killed_process_is_dropped(tmp_path: Path) -> None:
    journal = RunJournal(tmp_path / "7.jsonl")
    journal.write("planned", round=1)
    with journal.path.open("a") as file:
        file.write('{"event": "committed", "valid": {"risk": {}')

    assert [e["event"] for e in read_journal(journal.path)] == ["planned"]


def test_a_file_that_is_not_a_journal_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "7.jsonl"
    path.write_text('not json\n{"event": "planned"}\n')

    with pytest.raises(FailedPrecondition, match=r"7\.jsonl: line 1 is not JSON"):
        read_journal(path)


def test_a_run_that_wrote_nothing_yet_has_no_events(tmp_path: Path) -> None:
    assert read_journal(tmp_path / "none.jsonl") == []
