"""The base of every process's one settings model, and loading it from a YAML file.

Each process (gateway, bank node, partner node) defines one ``ProcessSettings`` subclass with
its own ``env_prefix``, nested ``Section`` models for its parts, builds it once in its command
and passes it down; nothing holds a module-level instance. Tests build it with keyword arguments.

Sources, highest first: keyword arguments (``load_settings`` passes the YAML file's keys this
way), then environment variables (``<env_prefix><FIELD>``, nested with ``__``), then defaults.
So the file is the record of what runs, and the environment may only fill what it leaves out
(for example a path that differs per host).

Unknown keys are errors everywhere, in sections too, so a misspelt key never falls back silently
to a default; models are frozen once built.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from cobrand.errors import ConfigError
from cobrand.yamlfile import format_validation_error, read_yaml_mapping

__all__ = ["ProcessSettings", "Section", "load_settings"]

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class Section(BaseModel):
    """A nested part of a settings model (``partner:``, ``tls:`` ...): no unknown keys, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ProcessSettings(BaseSettings):
    """Base of one process's settings; subclasses set their own ``env_prefix``.

    The default prefix ``COBRAND_`` keeps a field such as ``path`` from reading the
    unrelated ``PATH`` variable.
    """

    model_config = SettingsConfigDict(
        env_prefix="COBRAND_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )


def load_settings(model_cls: type[SettingsT], path: Path) -> SettingsT:
    """Build `model_cls` from the YAML mapping in `path`.

    Parameters
    ----------
    model_cls : type
        The process's settings model.
    path : Path
        A YAML file whose top level is a mapping of the model's keys; an empty file means
        "all defaults". Read by ``cobrand.yamlfile`` (safe loader, duplicate keys refused).

    Returns
    -------
    model_cls
        The validated, frozen settings.

    Raises
    ------
    ConfigError
        Naming `path` and, for invalid content, every bad key with what is wrong with it, e.g.
        ``gateway.yaml: key 'partner.deadline_ms': Input should be a valid integer;
        unknown key 'prtner'``.
    """
    data = read_yaml_mapping(path, ConfigError)
    # Keys reach the model as keyword arguments, where `_env_prefix` and friends would steer
    # pydantic-settings itself: refuse them (and non-string keys) as unknown keys.
    odd = [repr(key) for key in data if not isinstance(key, str) or key.startswith("_")]
    if odd:
        raise ConfigError(f"{path}: " + "; ".join(f"unknown key {key}" for key in odd))
    try:
        return model_cls(**data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc)}") from exc
