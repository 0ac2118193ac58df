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
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from cobrand.errors import ConfigError

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
        "all defaults".

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
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys, not a {type(data).__name__}"
        )
    # Keys reach the model as keyword arguments, where `_env_prefix` and friends would steer
    # pydantic-settings itself: refuse them (and non-string keys) as unknown keys.
    odd = [repr(key) for key in data if not isinstance(key, str) or key.startswith("_")]
    if odd:
        raise ConfigError(f"{path}: " + "; ".join(f"unknown key {key}" for key in odd))
    try:
        return model_cls(**data)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise ConfigError(f"{path}: {problems}") from exc


def _describe(error: ErrorDetails) -> str:
    key = _dotted(error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if error["type"] == "missing":
        return f"missing key '{key}'"
    # The offending value is left out on purpose: it may be a secret or an identifier.
    return f"key '{key}': {error['msg']}"


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text
