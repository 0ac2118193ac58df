"""The human training report read back as HTML: sections per task, real PNGs, escaping, refusals."""

import base64
import copy
import struct
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bank_node.holdout_scores import TaskScores
from bank_node.report_html import render_report_html, write_report_html
from cobrand.errors import InvalidRequest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert('x')</script> & \"risk\""


def _binary(rows: int, rng: np.random.Generator, events: bool = True) -> TaskScores:
    labels = (rng.uniform(size=rows) < 0.3).astype(np.int64) if events else np.zeros(rows, int)
    full = 1 / (1 + np.exp(-(rng.normal(size=rows) + 1.5 * labels - 1.0)))
    bank_only = 1 / (1 + np.exp(-(rng.normal(size=rows) + 0.5 * labels - 1.0)))
    return TaskScores(labels=labels, full=full, bank_only=bank_only)


def _classes(rows: int, rng: np.random.Generator, names: tuple[str, ...]) -> TaskScores:
    labels = rng.integers(0, len(names), rows)
    logits = rng.normal(size=(rows, len(names)))
    logits[np.arange(rows), labels] += 1.0
    full = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return TaskScores(labels=labels, full=full, bank_only=full[:, ::-1].copy(), classes=names)


def _report(scores: dict[str, TaskScores]) -> dict[str, Any]:
    """report.json's shape as `bank_node.report.training_report` builds it."""
    return {
        "run_id": "4242",
        "model_version": "0123456789abcdef",
        "model": {"best_round": 2, "bank_sha256": "ab" * 32, "partner_sha256": "cd" * 32},
        "alignment": {
            "run_id": "alignment-1",
            "bank_rows": 30_000,
            "partner_rows": 26_000,
            "intersection": 21_500,
        },
        "tasks": {task: {"test_rows": int(entry.labels.size)} for task, entry in scores.items()},
        "training": {"seconds": 812.5, "rounds": 4, "bytes_exchanged": 987_654_321},
        "privacy": {
            "defence": "none",
            "leak_auc_norm": None,
            "leak_auc_direction": None,
            "note": "attack AUCs not measured",
        },
    }


def _three_tasks() -> dict[str, TaskScores]:
    rng = np.random.default_rng(0)
    return {
        "risk": _binary(600, rng),
        "instalment": _binary(400, rng),
        "rights_package": _classes(500, rng, ("none", "shopping", "travel")),
    }


@pytest.fixture
def three_tasks() -> dict[str, TaskScores]:
    return _three_tasks()


@pytest.fixture(scope="module")
def three_task_html() -> str:
    """The report of `_three_tasks`, rendered once for the tests that only read it."""
    scores = _three_tasks()
    return render_report_html(_report(scores), scores)


class _Sections(HTMLParser):
    """Per section id: its heading text and the ``src`` of its images; also every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, Any]] = {}
        self.tags: set[str] = set()
        self._current: dict[str, Any] | None = None
        self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        attributes = dict(attrs)
        if tag == "section":
            self._current = self.sections.setdefault(
                str(attributes["id"]), {"heading": "", "images": [], "text": ""}
            )
        elif tag == "h2":
            self._in_heading = True
        elif tag == "img" and self._current is not None:
            self._current["images"].append(attributes["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._current = None
        elif tag == "h2":
            self._in_heading = False

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._current["text"] += data
            if self._in_heading:
                self._current["heading"] += data


def _parse(text: str) -> _Sections:
    parser = _Sections()
    parser.feed(text)
    parser.close()
    return parser


def _png_size(src: str) -> tuple[int, int]:
    """Width and height of a PNG data URI, after checking its signature and header chunk."""
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    data = base64.b64decode(src.removeprefix(prefix), validate=True)
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_every_task_gets_a_section_with_its_plots_as_valid_pngs(three_task_html: str) -> None:
    page = _parse(three_task_html)
    sections = page.sections
    assert [s["heading"] for s in sections.values()] == [
        "Task risk (binary)",
        "Task instalment (binary)",
        "Task rights_package (3 classes)",
    ]
    # ROC, KS, distribution, lift/gain, calibration; confusion matrices and calibration.
    assert [len(s["images"]) for s in sections.values()] == [5, 5, 2]
    for section in sections.values():
        for src in section["images"]:
            width, height = _png_size(src)
            assert width in (480, 960)
            assert height == 360
    for binary in ("task-1", "task-2"):
        text = sections[binary]["text"]
        for words in ("AUC", "Gini (2 AUC - 1)", "KS", "top-decile lift", "calibration error"):
            assert words in text
        assert "Score deciles, full model" in text
        assert "Score deciles, bank-only path" in text
    classes = sections["task-3"]["text"]
    assert "top-1 accuracy" in classes
    assert all(name in classes for name in ("none", "shopping", "travel"))


def test_the_header_shows_version_alignment_cost_and_privacy(three_task_html: str) -> None:
    text = three_task_html
    for shown in (
        "Training report: model 0123456789abcdef",
        "<td>alignment: bank rows</td><td>30,000</td>",
        "<td>alignment: partner rows</td><td>26,000</td>",
        "<td>alignment: intersection</td><td>21,500</td>",
        "<td>training: seconds</td><td>812.500</td>",
        "<td>training: bytes exchanged</td><td>987,654,321</td>",
        "<td>privacy: defence</td><td>none</td>",
        "<td>privacy: leak auc norm</td><td>n/a</td>",
        "<td>privacy: note</td><td>attack AUCs not measured</td>",
    ):
        assert shown in text


def test_the_report_is_one_file_without_scripts_or_external_resources(three_task_html: str) -> None:
    text = three_task_html
    page = _parse(text)
    assert "script" not in page.tags
    assert not {"link", "iframe", "object", "embed"} & page.tags
    assert "http" not in text
    assert "url(" not in text
    assert all(
        src.startswith("data:image/png;base64,")
        for s in page.sections.values()
        for src in s["images"]
    )


def test_hostile_task_class_and_report_strings_are_escaped() -> None:
    rng = np.random.default_rng(1)
    scores = {
        HOSTILE: _binary(300, rng),
        "package": _classes(300, rng, ("$\\frac{a}{b", "<b>bold</b>", "&amp;")),
    }
    report = _report(scores)
    report["privacy"]["note"] = "</td></table><img src=x onerror=alert(1)>"
    text = render_report_html(report, scores)
    assert "<script>" not in text
    assert "<b>bold</b>" not in text
    assert "<img src=x" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;risk&quot;" in text
    assert "&amp;amp;" in text
    headings = [s["heading"] for s in _parse(text).sections.values()]
    assert headings[0] == f"Task {HOSTILE} (binary)"


def test_nan_scores_are_refused_naming_the_task(three_tasks: dict[str, TaskScores]) -> None:
    three_tasks["instalment"].full[7] = np.nan
    with pytest.raises(
        InvalidRequest, match=r"task 'instalment': full-model score at test row 7 is nan"
    ):
        render_report_html(_report(three_tasks), three_tasks)


def test_a_task_with_one_class_gets_no_roc_and_a_sentence_saying_why() -> None:
    scores = {"risk": _binary(200, np.random.default_rng(2), events=False)}
    section = _parse(render_report_html(_report(scores), scores)).sections["task-1"]
    assert len(section["images"]) == 2  # the score distribution and the calibration
    assert "The test rows hold only non-events (0): ROC, KS, lift, gain" in section["text"]
    assert "Score deciles" not in section["text"]
    assert "AUC" in section["text"]  # the row is there, its value n/a
    assert "n/a" in section["text"]


def test_scores_for_other_tasks_or_rows_than_the_report_are_refused(
    three_tasks: dict[str, TaskScores],
) -> None:
    report = _report(three_tasks)
    fewer = dict(list(three_tasks.items())[:2])
    with pytest.raises(
        InvalidRequest, match=r"tasks with test rows \(risk, instalment, rights_package\) differ"
    ):
        render_report_html(report, fewer)
    other_rows = copy.deepcopy(report)
    other_rows["tasks"]["risk"]["test_rows"] = 601
    with pytest.raises(InvalidRequest, match="task 'risk': the report counts 601 test rows"):
        render_report_html(other_rows, three_tasks)


def test_a_task_without_labelled_test_rows_is_named_without_figures(
    three_tasks: dict[str, TaskScores],
) -> None:
    report = _report(three_tasks)
    report["tasks"]["instalment"]["test_rows"] = 0
    scored = {task: entry for task, entry in three_tasks.items() if task != "instalment"}

    text = render_report_html(report, scored)

    assert "<p>No labelled test rows for instalment: no figures.</p>" in text
    assert [section["heading"] for section in _parse(text).sections.values()] == [
        "Task risk (binary)",
        "Task rights_package (3 classes)",
    ]


def test_write_report_html_leaves_only_the_finished_file(tmp_path: Path) -> None:
    scores = {"risk": _binary(100, np.random.default_rng(3))}
    path = tmp_path / "out" / "report.html"
    path.parent.mkdir()
    path.write_text("an older report")
    write_report_html(path, _report(scores), scores)
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]
