"""The federation file: what both parties agree on before they match customers.

Both parties hold the same file (federation id, version, identifier kinds with their canonical
forms). Its digest, a SHA-256 over a canonical JSON form of the parsed file, enters the PSI
domain separator, so parties whose normalization differs fail to match anyone instead of
matching the wrong people. Formatting, comments and key order do not change the digest; any
change of meaning does. Example::

    federation_id: cobrand-demo
    version: 1                  # bump on any change of normalization
    identifier_kinds:
      mobile_cn: {canonical_form: e164-cn-mobile}
      national_id_cn: {canonical_form: gb11643-upper}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

import pydantic
from pydantic import ConfigDict, Field, StringConstraints

from cobrand.errors import FederationError
from cobrand.identifiers import IDENTIFIER_KINDS
from cobrand.yamlfile import load_yaml_model

__all__ = ["Federation", "IdentifierKindEntry", "load_federation"]


class IdentifierKindEntry(pydantic.BaseModel):
    """One identifier kind as the federation file lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    canonical_form: str


class Federation(pydantic.BaseModel):
    """A parsed, validated federation file.

    Attributes
    ----------
    federation_id : str
        Lower-case letters, digits and dashes, 3 to 64 characters.
    version : int
        Positive; bumped on any change of normalization.
    identifier_kinds : dict of str to IdentifierKindEntry
        Kinds usable for matching, each known to `cobrand.identifiers.IDENTIFIER_KINDS` with
        the same canonical form.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    federation_id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{3,64}$")]
    version: Annotated[int, Field(strict=True, ge=1)]
    identifier_kinds: Annotated[dict[str, IdentifierKindEntry], Field(min_length=1)]

    @pydantic.field_validator("identifier_kinds")
    @classmethod
    def _kinds_match_the_registry(
        cls, kinds: dict[str, IdentifierKindEntry]
    ) -> dict[str, IdentifierKindEntry]:
        for name, entry in kinds.items():
            known = IDENTIFIER_KINDS.get(name)
            if known is None:
                raise ValueError(
                    f"{name!r} is not a known identifier kind "
                    f"(known: {', '.join(IDENTIFIER_KINDS)})"
                )
            if entry.canonical_form != known.canonical_form:
                raise ValueError(
                    f"{name}.canonical_form is {entry.canonical_form!r}, but this version of "
                    f"cobrand canonicalizes {name} as {known.canonical_form!r}"
                )
        return kinds

    def digest(self) -> bytes:
        """SHA-256 of the canonical JSON form (sorted keys, no whitespace) of this federation."""
        canonical = json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        )
        return hashlib.sha256(canonical.encode("ascii")).digest()


def load_federation(path: Path) -> Federation:
    """Read and validate a federation file.

    Parameters
    ----------
    path : Path
        The federation YAML file.

    Raises
    ------
    FederationError
        Naming the file and the key, if the file is unreadable or invalid, or lists an
        identifier kind unknown to this version of cobrand or with another canonical form.
    """
    return load_yaml_model(path, Federation, FederationError)
