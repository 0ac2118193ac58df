"""Reading a YAML file into a pydantic model, with errors that name the file and the key.

Federation and party schema files share this path from bytes to model. YAML is read with the
safe loader, refusing a key written twice in one mapping: plain PyYAML keeps the last one
silently, so a second ``features:`` block would replace the first without a word.
Messages follow `cobrand.settings`: ``unknown key 'x'``, ``missing key 'x'``, ``key 'x': ...``,
and leave the offending value out, since it may be an identifier.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml
from pydantic_core import ErrorDetails

from cobrand.errors import ConfigError

__all__ = ["format_validation_error", "load_yaml_model", "read_yaml_mapping"]

Model = TypeVar("Model", bound=pydantic.BaseModel)


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe loader that refuses duplicate keys in a mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is written twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: Path, error: type[ConfigError]) -> dict[Any, Any]:
    """Read `path` as a YAML mapping; an empty file is an empty mapping.

    Raises
    ------
    ConfigError
        Of class `error`, naming the file (and line and column for a syntax error or a
        duplicate key), when the file is unreadable, not YAML or not a mapping.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {path}: {exc}") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a safe loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        raise error(f"{path}:{where} not valid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: the top level must be a mapping of keys, not a {type(data).__name__}")
    return data


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _describe(detail: ErrorDetails, missing: list[tuple[int | str, ...]]) -> str:
    key = _dotted(detail["loc"])
    if detail["type"] == "extra_forbidden":
        # A misspelt required key shows up as one unknown and one missing key side by side.
        parent, name = detail["loc"][:-1], str(detail["loc"][-1])
        siblings = [str(loc[-1]) for loc in missing if loc[:-1] == parent]
        close = difflib.get_close_matches(name, siblings, n=1)
        return f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    if detail["type"] == "missing":
        return f"missing key '{key}'"
    # Our validators raise ValueError with a full sentence; drop pydantic's "Value error, ".
    message = str(detail["ctx"]["error"]) if detail["type"] == "value_error" else detail["msg"]
    # A check across several keys (a column used twice) has no key path; its message names them.
    return f"key '{key}': {message}" if key else message


def format_validation_error(error: pydantic.ValidationError) -> str:
    """Render every problem of a validation error, joined by ``; ``.

    Parameters
    ----------
    error : pydantic.ValidationError
        The error raised while validating a model.

    Returns
    -------
    str
        E.g. ``missing key 'version'; unknown key 'versoin' (did you mean 'version'?)``.
    """
    details = error.errors()
    missing = [detail["loc"] for detail in details if detail["type"] == "missing"]
    return "; ".join(_describe(detail, missing) for detail in details)


def load_yaml_model(path: Path, model: type[Model], error: type[ConfigError]) -> Model:
    """Read `path` as YAML and validate it as `model`.

    Parameters
    ----------
    path : Path
        The YAML file.
    model : type of pydantic.BaseModel
        The model the file's top-level mapping must satisfy.
    error : type of ConfigError
        The error class to raise, e.g. ``SchemaError`` for a party schema file.

    Raises
    ------
    ConfigError
        Of class `error`, whose message starts with the file name and names every offending
        key, when the file is unreadable, not YAML, not a mapping or fails validation.
    """
    data = read_yaml_mapping(path, error)
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise error(f"{path}: {format_validation_error(exc)}") from exc
