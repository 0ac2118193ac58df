"""Settings: one frozen model per process, loaded from YAML, every bad key named with its file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cobrand.errors import ConfigError
from cobrand.settings import ProcessSettings, Section, load_settings


class PartnerSection(Section):
    address: str = "127.0.0.1:7000"
    deadline_ms: int = 40


class ExampleSettings(ProcessSettings, env_prefix="COBRAND_EXAMPLE_"):
    name: str
    partner: PartnerSection = PartnerSection()
    hosts: tuple[str, ...] = ()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_file_loads_with_defaults_for_missing_sections(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: gw1\npartner:\n  deadline_ms: 25\n")
    settings = load_settings(ExampleSettings, path)
    assert settings.name == "gw1"
    assert settings.partner == PartnerSection(deadline_ms=25)


def test_every_bad_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "name: gw1\nprtner: {}\npartner:\n  deadline_ms: soon\n  adress: x\nhosts: [a, {b: 1}]\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(ExampleSettings, path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert "key 'partner.deadline_ms': Input should be a valid integer" in message
    assert "unknown key 'prtner'" in message
    assert "unknown key 'partner.adress'" in message
    assert "key 'hosts[1]': Input should be a valid string" in message


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gateway\.yaml: missing key 'name'"):
        load_settings(ExampleSettings, _write(tmp_path, "partner: {}\n"))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*absent\.yaml"):
        load_settings(ExampleSettings, tmp_path / "absent.yaml")


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: gw1\npartner: [unclosed\n")
    with pytest.raises(ConfigError, match=r"gateway\.yaml: line 3, column 1: not valid YAML"):
        load_settings(ExampleSettings, path)


def test_key_written_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gateway\.yaml: line 2.*key 'name' is written twice"):
        load_settings(ExampleSettings, _write(tmp_path, "name: a\nname: b\n"))


def test_top_level_list_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping of keys, not a list"):
        load_settings(ExampleSettings, _write(tmp_path, "- name\n"))


def test_keys_that_would_steer_pydantic_settings_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: gw1\n_env_prefix: EVIL_\n7: x\n")
    with pytest.raises(ConfigError, match=r"unknown key '_env_prefix'; unknown key 7"):
        load_settings(ExampleSettings, path)


def test_environment_fills_only_what_the_file_leaves_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COBRAND_EXAMPLE_NAME", "from-env")
    monkeypatch.setenv("COBRAND_EXAMPLE_PARTNER__DEADLINE_MS", "90")
    settings = load_settings(ExampleSettings, _write(tmp_path, "partner:\n  deadline_ms: 25\n"))
    assert settings.name == "from-env"
    assert settings.partner.deadline_ms == 25


def test_unprefixed_environment_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAME", "leaked")
    with pytest.raises(ValidationError):
        ExampleSettings()  # type: ignore[call-arg]


def test_settings_are_frozen() -> None:
    settings = ExampleSettings(name="gw1")
    with pytest.raises(ValidationError, match="frozen"):
        settings.name = "other"
    with pytest.raises(ValidationError, match="frozen"):
        settings.partner.deadline_ms = 1
