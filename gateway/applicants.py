"""Who an applicant is to the gateway: a keyed pseudonym, the join key of the last alignment
and, for an existing bank customer, the bank's stored features.

The request's identifier is canonicalized as its kind says (`cobrand.identifiers`), keyed
into a pseudonym (`gateway.pseudonyms`) and then forgotten: nothing downstream sees it raw,
except the consented lookup of an applicant outside the alignment, which blinds it
(`gateway.consented_lookup`); it is never logged or recorded.
The bank's alignment result (``<bank data_dir>/alignment.sqlite``) maps the bank's canonical
identifiers to the join keys the partner knows; `ApplicantDirectory` reads it once at start
into a sorted in-memory index, so a lookup is a binary search, not a database query. The
alignment and the bank's table are keyed by one identifier kind (the bank schema's); an
applicant identified by another kind of the federation is scored as a new applicant.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cobrand import oprf
from cobrand.alignment_store import JOIN_KEY_DTYPE, AlignmentStore
from cobrand.errors import InvalidRequest, NotFound
from cobrand.identifiers import IDENTIFIER_KINDS
from gateway.application import FieldValue, StoredFeatures
from gateway.audit_record import Pseudonym
from gateway.pseudonyms import PseudonymKey

__all__ = ["Applicant", "ApplicantDirectory", "JoinKeyIndex"]

_LOG = logging.getLogger(__name__)
# An identifier longer than this is no identifier of any kind; refused before any parsing.
_MAX_IDENTIFIER_CHARS = 256


@dataclass(frozen=True)
class Applicant:
    """An applicant as the gateway knows them; never the raw identifier.

    Attributes
    ----------
    pseudonym : Pseudonym
        The keyed pseudonym of the canonical identifier, for logs and the audit record.
    join_key : bytes or None
        The applicant's join key in the last alignment; None outside the aligned set.
    stored : mapping of str to FieldValue, or None
        The bank's stored features of an existing customer; None for a new applicant.
    lookup_input : bytes or None
        Outside the aligned set, the identifier as a consented lookup's input
        (``cobrand.oprf.lookup_input``); None for an aligned customer. Never shown.
    """

    pseudonym: Pseudonym
    join_key: bytes | None
    stored: Mapping[str, FieldValue] | None
    lookup_input: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class JoinKeyIndex:
    """The bank's side of an alignment in memory: canonical identifiers, sorted, and their keys.

    Attributes
    ----------
    run_id : str
        The alignment run; empty when the bank has no alignment yet.
    ids : ndarray of str, shape (n,)
        Canonical identifiers, ascending.
    keys : ndarray of V16, shape (n,)
        ``keys[i]`` is the join key of ``ids[i]`` (raw bytes: a fixed-width bytes dtype would
        drop a key's trailing zero bytes).
    """

    run_id: str
    ids: npt.NDArray[np.str_]
    keys: npt.NDArray[np.void]

    @classmethod
    def read(cls, data_dir: Path) -> JoinKeyIndex:
        """The bank's current alignment in `data_dir`; empty (with a warning) when none yet.

        Raises
        ------
        FailedPrecondition
            The alignment file is damaged.
        """
        try:
            store = AlignmentStore(data_dir)
        except NotFound:
            _LOG.warning(
                "[Applicants] no alignment in %s: every applicant is scored from the bank's "
                "slice alone until an alignment runs",
                data_dir,
            )
            return cls("", np.array([], dtype=str), np.array([], dtype=JOIN_KEY_DTYPE))
        with store:
            batches = list(store.members())
            run_id = store.summary.run_id
        if not batches:
            return cls(run_id, np.array([], dtype=str), np.array([], dtype=JOIN_KEY_DTYPE))
        keys = np.concatenate([k for k, _ in batches])
        ids = np.concatenate([i for _, i in batches]).astype(str)
        order = np.argsort(ids, kind="stable")
        _LOG.info("[Applicants] alignment %s: %d aligned customers indexed", run_id, len(ids))
        return cls(run_id, ids[order], keys[order])

    def join_key(self, canonical_id: str) -> bytes | None:
        """The join key of `canonical_id`, or None outside the alignment."""
        position = int(np.searchsorted(self.ids, canonical_id))
        if position < len(self.ids) and self.ids[position] == canonical_id:
            key: bytes = self.keys[position].tobytes()
            return key
        return None


class ApplicantDirectory:
    """Turns a request's identifier into an `Applicant`. Thread-safe (read-only after start).

    Parameters
    ----------
    kinds : frozenset of str
        The identifier kinds the federation lists; a request naming another is refused.
    table_kind : str
        The kind the bank's table and alignment are keyed by (the bank schema's).
    index : JoinKeyIndex
    key : PseudonymKey
    stored : StoredFeatures or None
        The bank's stored rows by canonical identifier; None serves without them.
    """

    def __init__(
        self,
        kinds: frozenset[str],
        table_kind: str,
        index: JoinKeyIndex,
        key: PseudonymKey,
        stored: StoredFeatures | None,
    ) -> None:
        self._kinds = kinds
        self._table_kind = table_kind
        self._index = index
        self._key = key
        self._stored = stored

    def resolve(self, kind: str, identifier: str) -> Applicant:
        """The applicant an identifier of `kind` names.

        Raises
        ------
        InvalidRequest
            Naming ``identifier_kind`` (not a kind of the federation) or ``identifier`` (not
            readable as that kind); the identifier itself is never quoted.
        """
        if kind not in self._kinds:
            raise InvalidRequest(
                f"field 'identifier_kind': {kind!r} is not an identifier kind of the federation "
                f"({', '.join(sorted(self._kinds))})"
            )
        if len(identifier) > _MAX_IDENTIFIER_CHARS:
            raise InvalidRequest(
                f"field 'identifier': {len(identifier)} characters, at most {_MAX_IDENTIFIER_CHARS}"
            )
        canonical_id = IDENTIFIER_KINDS[kind].canonicalize_one(identifier)
        if canonical_id is None:
            raise InvalidRequest(f"field 'identifier': not a valid {kind} identifier")
        pseudonym = self._key.pseudonym(kind, canonical_id)
        lookup_input = oprf.lookup_input(kind, canonical_id)
        if kind != self._table_kind:
            return Applicant(pseudonym, None, None, lookup_input)
        stored = self._stored(canonical_id) if self._stored is not None else None
        join_key = self._index.join_key(canonical_id)
        return Applicant(pseudonym, join_key, stored, lookup_input if join_key is None else None)
