"""`cobrand monitor` over a real SQLite audit log and a real saved bank version.

Three windows of decisions are logged: one of the version's training applicants, each once in
a shuffled order, with probabilities drawn as its training ones were; the same with every
applicant's monthly income tripled; and as many applicants drawn from the training ones with
replacement. The first and the last must read stable throughout, the second shift on that one
feature.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from bank_node.training_data import TRAIN
from gateway.application import FieldValue
from gateway.audit_log import AuditSettings, open_audit_log
from gateway.audit_record import AuditRecord
from gateway.monitor_cli import run
from tests.gateway.audit_records import T0, make_record
from tests.gateway.synth_version import SynthVersion, synth_version

SHIFTED = "monthly_income"
DAY = dt.timedelta(days=1)
STABLE_WINDOW = ["--since", T0.isoformat(), "--until", (T0 + DAY).isoformat()]
SHIFTED_WINDOW = ["--since", (T0 + DAY).isoformat(), "--until", (T0 + 2 * DAY).isoformat()]
RESAMPLED_WINDOW = ["--since", (T0 + 2 * DAY).isoformat(), "--until", (T0 + 3 * DAY).isoformat()]
OLD_VERSION = "0123456789abcdef"

runner = CliRunner()
app = typer.Typer()
app.command()(run)


@dataclasses.dataclass(frozen=True)
class Sources:
    version: SynthVersion
    bank_yaml: Path
    db: Path

    @property
    def options(self) -> list[str]:
        return ["--bank-config", str(self.bank_yaml), "--db", str(self.db)]


def _decisions(
    sv: SynthVersion, start: dt.datetime, seed: int, *, scale: float = 1.0, resampled: bool = False
) -> list[AuditRecord]:
    """A decision per training applicant, shuffled (or as many drawn with replacement),
    `SHIFTED` multiplied by `scale`; probabilities drawn as the synthetic version's training
    ones were."""
    rng = np.random.default_rng(seed)
    table, preprocessor = sv.table, sv.version.preprocessor
    train = np.flatnonzero(table.split == TRAIN)
    rows = rng.choice(train, train.size) if resampled else rng.permutation(train)
    probabilities = rng.uniform(0.01, 0.4, rows.size)
    records = []
    for i, (row, probability) in enumerate(zip(rows, probabilities, strict=True)):
        features: dict[str, FieldValue] = {}
        for j, state in enumerate(preprocessor.numeric):
            value = float(table.numeric[row, j])
            features[state.name] = None if np.isnan(value) else value
        income = features[SHIFTED]
        if isinstance(income, float):
            features[SHIFTED] = income * scale
        for j, category in enumerate(preprocessor.categorical):
            # As the gateway records them: trimmed and lower-cased, blank as missing.
            text = table.categorical[row, j]
            features[category.name] = None if text is None else (text.strip().lower() or None)
        record = make_record(
            f"APP-{seed}-{i}",
            decided_at=start + i * dt.timedelta(seconds=10),
            model_version=sv.version.manifest.version_id,
            probability=float(probability),
        )
        records.append(dataclasses.replace(record, bank_features=features))
    return records


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    sv = synth_version(tmp_path_factory)
    directory = tmp_path_factory.mktemp("monitor")
    bank_yaml = directory / "bank.yaml"
    # Only data_dir is read (the registry under it); the rest must merely be valid settings.
    bank_yaml.write_text(
        f"federation: {directory / 'federation.yaml'}\nschema: {directory / 'schema.yaml'}\n"
        f"table: {sv.table.source}\ndata_dir: {sv.table.source.parent}\n"
        "partner: {address: 127.0.0.1:1}\n"
    )
    db = directory / "audit.db"
    records = [
        # An older version's decision opens the first window: the default is the latest's.
        make_record("APP-old", decided_at=T0, model_version=OLD_VERSION),
        *_decisions(sv, T0 + dt.timedelta(minutes=1), 10),
        *_decisions(sv, T0 + DAY, 30, scale=3.0),
        *_decisions(sv, T0 + 2 * DAY, 40, resampled=True),
    ]
    with open_audit_log(AuditSettings(path=db)) as log, ThreadPoolExecutor(16) as pool:
        # Concurrent writers share group commits: one flush per batch, not per record.
        list(pool.map(log.record, records))
    return Sources(sv, bank_yaml, db)


def _monitor(sources: Sources, *options: str) -> dict[str, object]:
    result = runner.invoke(app, [*sources.options, *options, "--json"])
    assert result.exit_code == 0, result.output
    body: dict[str, object] = json.loads(result.stdout)
    return body


def _bands(body: dict[str, object]) -> dict[str, str]:
    variables = body["variables"]
    assert isinstance(variables, list)
    return {v["name"]: v["band"] for v in variables}


def test_decisions_drawn_like_the_training_rows_are_stable(sources: Sources) -> None:
    body = _monitor(sources, *STABLE_WINDOW)
    assert body["model_version"] == sources.version.version.manifest.version_id
    assert body["rates"] == {
        "decisions": sources.version.version.baseline.rows,
        "approve": 1.0,
        "refer": 0.0,
        "decline": 0.0,
        "partner_fallback": 0.0,
        "fallback_by_status": dict.fromkeys(
            ("no_consent", "unknown_applicant", "timeout", "unavailable"), 0.0
        ),
    }
    baseline = sources.version.version.baseline
    assert set(_bands(body)) == {"risk", *baseline.numeric, *baseline.categorical}
    assert set(_bands(body).values()) == {"stable"}


def test_decisions_resampled_from_the_training_rows_are_stable(sources: Sources) -> None:
    body = _monitor(sources, *RESAMPLED_WINDOW)
    rates = body["rates"]
    assert isinstance(rates, dict)
    assert rates["decisions"] == sources.version.version.baseline.rows
    assert set(_bands(body).values()) == {"stable"}


def test_a_shifted_feature_is_flagged_shift_and_nothing_else_is(sources: Sources) -> None:
    bands = _bands(_monitor(sources, *SHIFTED_WINDOW))
    assert bands.pop(SHIFTED) == "shift"
    assert set(bands.values()) == {"stable"}


def test_the_terminal_table_names_each_variable_and_its_band(sources: Sources) -> None:
    result = runner.invoke(app, [*sources.options, *SHIFTED_WINDOW], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if SHIFTED in line)
    assert "numeric" in line
    assert "shift" in line
    assert f"{sources.version.version.baseline.rows} decisions" in result.stdout
    assert "Partner fallback by status: no_consent 0.0%" in result.stdout


def test_the_plot_is_a_png(sources: Sources, tmp_path: Path) -> None:
    path = tmp_path / "stability.png"
    result = runner.invoke(app, [*sources.options, *SHIFTED_WINDOW, "--plot", str(path)])
    assert result.exit_code == 0, result.output
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000  # nine panels of bars, not an empty canvas


def test_the_gateway_settings_name_both_the_store_and_the_registry(
    sources: Sources, tmp_path: Path
) -> None:
    gateway_yaml = tmp_path / "gateway.yaml"
    gateway_yaml.write_text(
        f"listen: 127.0.0.1:0\ninsecure: true\nbank: {sources.bank_yaml}\n"
        f"model_version: {sources.version.version.manifest.version_id}\n"
        f"decision_config: {tmp_path / 'decision.yaml'}\n"
        f"pseudonym_key: {tmp_path / 'pseudonym.key'}\n"
        "partner: {address: 127.0.0.1:1}\n"
        f"audit: {{backend: sqlite, path: {sources.db}}}\n"
    )
    result = runner.invoke(app, ["--config", str(gateway_yaml), *SHIFTED_WINDOW, "--json"])
    assert result.exit_code == 0, result.output
    assert _bands(json.loads(result.stdout))[SHIFTED] == "shift"

    missing = tmp_path / "elsewhere.db"
    gateway_yaml.write_text(gateway_yaml.read_text().replace(str(sources.db), str(missing)))
    result = runner.invoke(app, ["--config", str(gateway_yaml), *SHIFTED_WINDOW])
    assert result.exit_code == 2
    assert result.stderr == f"error: {gateway_yaml}: audit.path {missing}: no audit database here\n"
    assert not missing.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--since", "2020-01-01", "--until", "2020-01-02"],
            "error: --since/--until: no decisions from 2020-01-01T00:00:00+00:00",
        ),
        (
            [*STABLE_WINDOW, "--model-version", "ffffffffffffffff"],
            "error: --model-version: model version ffffffffffffffff is not in",
        ),
        (
            ["--since", T0.isoformat(), "--until", (T0 + dt.timedelta(seconds=1)).isoformat()],
            f"error: --model-version (default: the window's latest): model version {OLD_VERSION}",
        ),
        ([*STABLE_WINDOW, "--plot", "out.jpg"], "error: --plot: out.jpg must be a .png file"),
        (["--since", "2026-11-24", "--until", "2026-11-23"], "error: --since/--until: the window"),
        (["--since", "yesterday"], "error: --since: 'yesterday' is not an ISO 8601 time"),
    ],
)
def test_an_empty_window_an_unknown_version_or_a_bad_option_exits_2_naming_it(
    sources: Sources, options: list[str], message: str
) -> None:
    result = runner.invoke(app, [*sources.options, *options])
    assert result.exit_code == 2
    assert result.stderr.startswith(message)
    assert len(result.stderr.splitlines()) == 1
