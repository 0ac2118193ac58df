"""The `cobrand` command as a user runs it: every group mounted, the demo end to end."""

from pathlib import Path

from typer.testing import CliRunner

from cobrand.cli import app

runner = CliRunner()


def test_help_lists_every_command_group() -> None:
    result = runner.invoke(app, ["--help"])

    assert result.exit_code == 0
    for command in ("pki", "data", "demo"):
        assert command in result.output


def test_demo_aligns_privately_and_refuses_the_unknown_ca(
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
            "--real-data",
            str(shared_data),
        ],
    )

    assert result.exit_code == 0, result.output
    assert "bank     2,000 rows" in result.output
    assert "intersection            800  (40.0% of the bank's rows)" in result.output
    assert "bank gateway certificate:        accepted (SERVING)" in result.output
    assert "certificate from an unknown CA:  refused (UNAVAILABLE)" in result.output
    assert "bank 30,000 rows x 13 features" in result.output
    assert "partner 30,000 rows x 10 features" in result.output
