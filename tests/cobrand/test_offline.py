"""Flower must never phone out from a cobrand process."""

import os
from pathlib import Path

import pytest

from cobrand.offline import configure_offline_flower


def test_offline_flower_overrides_telemetry_turned_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "1")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "0")
    monkeypatch.delenv("FLWR_HOME")

    configure_offline_flower(tmp_path)

    assert os.environ["FLWR_TELEMETRY_ENABLED"] == "0"
    assert os.environ["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert os.environ["FLWR_HOME"] == str(tmp_path.resolve())


def test_offline_flower_keeps_an_explicit_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "explicit"))

    configure_offline_flower(tmp_path / "default")

    assert os.environ["FLWR_HOME"] == str(tmp_path / "explicit")
