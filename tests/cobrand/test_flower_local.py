"""The local federation's SuperNode key: private from its creation, new at every start."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cobrand.flower_local import _write_ssh_key as _write_ssh_key


@pytest.mark.usefixtures("umask_022")
def test_the_supernode_key_is_never_readable_by_others_not_even_before_a_chmod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError("a chmod after creation leaves the key readable meanwhile")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    key = tmp_path / "supernode-key"

    _write_ssh_key(key)

    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    private = serialization.load_ssh_private_key(key.read_bytes(), password=None)
    public = serialization.load_ssh_public_key(key.with_suffix(".pub").read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert private.public_key().public_numbers() == public.public_numbers()


def test_a_second_start_in_the_same_directory_writes_a_new_key(tmp_path: Path) -> None:
    key = tmp_path / "supernode-key"
    _write_ssh_key(key)
    first = key.read_bytes()

    _write_ssh_key(key)

    assert key.read_bytes() != first
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
