"""Test helper (no tests): a bank schema edited after training, its rights-package classes
reversed, for showing that serving names a version's outputs by the version alone."""

from __future__ import annotations

from pathlib import Path

import yaml

__all__ = ["reverse_package_classes"]


def reverse_package_classes(bank_settings: Path, directory: Path) -> tuple[str, ...]:
    """Point the bank node's settings file at a copy of its schema (written under `directory`)
    whose ``labels.rights_package.classes`` are reversed; return the classes as they were."""
    settings = yaml.safe_load(bank_settings.read_text())
    schema = yaml.safe_load(Path(settings["schema"]).read_text())
    package = schema["labels"]["rights_package"]
    classes = tuple(package["classes"])
    package["classes"] = list(reversed(classes))
    reordered = directory / "reordered_bank_schema.yaml"
    reordered.write_text(yaml.safe_dump(schema, sort_keys=False))
    bank_settings.write_text(yaml.safe_dump(settings | {"schema": str(reordered)}))
    return classes
