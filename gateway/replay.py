"""Replaying an audited decision: recompute it from what was recorded and compare, field by field.

`replay` takes a record and a `Scorer` of the record's model version and scores the recorded
inputs again: the bank fields as scored (encoded anew with the version's own preprocessor) and
the partner embedding used, or none when the decision was bank-only. Scoring is deterministic
(`gateway.scoring`), so an unaltered record replays to the same outputs bit for bit; any
difference means the record, the model files or the decision configuration changed.

The configuration is the one the caller names (`scorer_for` reads it from the gateway's
settings); the record holds the digest of the one the gateway decided with, and a replay with
another is reported as a difference of its own (``decision_config_sha256``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from bank_node.config import BankNodeConfig
from cobrand.settings import load_settings
from gateway.audit_record import AuditRecord
from gateway.scoring import Scorer, ScoreResult
from gateway.server import load_scorer
from gateway.settings import GatewaySettings

__all__ = ["COMPARED_FIELDS", "FieldDifference", "Replay", "replay", "scorer_for"]

COMPARED_FIELDS: Final = (
    "model_version",
    "decision",
    "probability_of_default",
    "score",
    "score_band",
    "rule_hits",
    "credit_limit_minor",
    "currency",
    "limit_band",
    "packages",
    "instalment",
    "reasons",
    "slices",
)
"""The `ScoreResult` fields a replay compares: every one."""


@dataclass(frozen=True)
class FieldDifference:
    """One output whose recorded and replayed values differ, each shown exactly (``repr``)."""

    field: str
    recorded: str
    replayed: str


@dataclass(frozen=True)
class Replay:
    """A recorded decision next to its recomputation.

    Attributes
    ----------
    record : AuditRecord
    replayed : ScoreResult
    differences : tuple of FieldDifference
        Empty when every compared field matches exactly.
    """

    record: AuditRecord
    replayed: ScoreResult
    differences: tuple[FieldDifference, ...]

    @property
    def matches(self) -> bool:
        """Whether every output was recomputed exactly as recorded."""
        return not self.differences


def scorer_for(settings: GatewaySettings, version_id: str) -> Scorer:
    """The scorer of `version_id` from the bank registry and decision file `settings` name.

    Raises
    ------
    ConfigError
        A bad bank settings or decision file, or one that does not fit the version.
    UnknownModelVersion
        The version is not in the bank's registry.
    FailedPrecondition
        A file of the version differs from its manifest.
    """
    return load_scorer(
        load_settings(BankNodeConfig, settings.bank), settings.decision_config, version_id
    )


def replay(record: AuditRecord, scorer: Scorer) -> Replay:
    """Recompute `record`'s decision with `scorer` (of the record's version) and compare.

    Raises
    ------
    InvalidRequest
        A recorded input the scorer refuses (naming the field), as from an altered record.
    """
    row = scorer.encoder.encode(record.bank_features)
    result = scorer.score(row, record.partner_embedding)
    differences = tuple(
        FieldDifference(name, _shown(recorded), _shown(replayed))
        for name in COMPARED_FIELDS
        if (recorded := getattr(record.result, name)) != (replayed := getattr(result, name))
    )
    if record.decision_config_sha256 != scorer.config.digest:
        differences += (
            FieldDifference(
                "decision_config_sha256",
                repr(record.decision_config_sha256),
                repr(scorer.config.digest),
            ),
        )
    return Replay(record, result, differences)


def _shown(value: object) -> str:
    return repr(value.value) if isinstance(value, Enum) else repr(value)
