"""Fixtures for the shared package's tests: a federation, file writers and the usual umask."""

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cobrand.federation import Federation, IdentifierKindEntry
from cobrand.identifiers import IDENTIFIER_KINDS

WriteText = Callable[[str, str], Path]


@pytest.fixture
def write_text(tmp_path: Path) -> WriteText:
    """Write dedented text to a file under tmp_path and return its path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return write


@pytest.fixture
def federation() -> Federation:
    """A federation listing every identifier kind except email."""
    return Federation(
        federation_id="test-federation",
        version=1,
        identifier_kinds={
            name: IdentifierKindEntry(canonical_form=kind.canonical_form)
            for name, kind in IDENTIFIER_KINDS.items()
            if name != "email"
        },
    )


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which a file created by default is readable by everyone."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)
