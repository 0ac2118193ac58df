"""Fixtures for the shared package's tests: a federation, file writers, the shared real data."""

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from cobrand.federation import Federation, IdentifierKindEntry
from cobrand.identifiers import IDENTIFIER_KINDS

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data directory, ``../shared/data`` beside the repository.

    CI always has it, so its absence is a failure, never a skip.
    """
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"shared data directory {SHARED_DATA} is missing: the real default-credit files "
            "must sit in ../shared/data beside the repository (CI clones it there)"
        )
    return SHARED_DATA
