"""The `cobrand` command as a user runs it: every group mounted, the demo end to end."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cobrand.cli import app

runner = CliRunner()


def test_help_lists_every_command_group() -> None:
    result = runner.invoke(app, ["--help"])

    assert result.exit_code == 0
    for command in ("pki", "data", "demo", "align", "train"):
        assert command in result.output


@pytest.mark.slow
def test_demo_aligns_trains_scores_through_the_gateway_and_refuses_the_unknown_ca(
    tmp_path: Path, shared_data: Path
) -> None:
    result = runner.invoke(
        app,
        [
            "demo",
            "--out",
            str(tmp_path / "demo"),
            "--customers",
            "2000",
            "--rounds",
            "2",
            "--real-data",
            str(shared_data),
        ],
    )

    assert result.exit_code == 0, result.output
    assert "bank     2,000 rows" in result.output
    assert "intersection            800  (40.0% of the bank's rows)" in result.output
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["alignment"]["intersection"] == 800
    assert report["training"]["rounds"] == 2
    risk = report["tasks"]["risk"]
    assert (
        f"risk            AUC {risk['auc']:.3f} with the partner vs "
        f"{risk['bank_only_auc']:.3f} bank-only" in result.output
    )
    assert "rights_package  top-1" in result.output
    assert "bank gateway certificate:        accepted (SERVING)" in result.output
    assert "certificate from an unknown CA:  refused (UNAVAILABLE)" in result.output
    assert "bank 30,000 rows x 13 features" in result.output
    assert "partner 30,000 rows x 10 features" in result.output
    served = _answer(result.output, "aligned customer, partner serving")
    unknown = _answer(result.output, "bank customer the partner does not know")
    stopped = _answer(result.output, "aligned customer, partner stopped")
    assert "slices bank + partner, partner slice USED" in served
    assert "slices bank only, partner slice UNKNOWN_APPLICANT" in unknown
    assert re.search(r"slices bank only, partner slice (UNAVAILABLE|TIMEOUT);", stopped)
    audit = runner.invoke(
        app, ["audit", "list", "--db", str(tmp_path / "demo" / "align" / "audit.db"), "--json"]
    )
    assert audit.exit_code == 0, audit.output
    records = [json.loads(line) for line in audit.output.splitlines()]
    assert [r["request_id"] for r in records] == [
        _request_id(answer) for answer in (served, unknown, stopped)
    ]
    assert [r["partner_status"] for r in records[:2]] == ["used", "unknown_applicant"]


def _answer(output: str, label: str) -> str:
    """The demo's two lines answering the application it labels `label`."""
    lines = output.splitlines()
    (first,) = (i for i, line in enumerate(lines) if line.startswith(f"  {label}: "))
    answer = "\n".join(lines[first : first + 2])
    assert re.search(r": (APPROVE|REFER|DECLINE), score -?\d+ \(band [A-E], PD ", answer), answer
    return answer


def _request_id(answer: str) -> str:
    found = re.search(r"; request ([0-9a-f-]{36})$", answer)
    assert found is not None, answer
    return found.group(1)
