"""Population stability of recent decisions against a model version's training baseline.

`stability_report` takes the audit records of one version's decisions over a window and the
version's `MonitoringBaseline` (bins and shares on the training rows) and returns what the
risk team reads in `cobrand monitor`: per variable (the risk probability, then each numeric and
categorical bank feature) the training and recent shares of each baseline bin, their PSI and
its band, and the decision and partner-fallback rates. Recent values are binned with the
baseline's own bins (`NumericBins.counts`, `CategoryBins.counts`), so both sides are counted
alike; the bank features are those recorded as scored, categories already lower-cased and
trimmed as the preprocessor reads them.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from bank_node.monitoring_baseline import (
    OTHER_OR_MISSING,
    CategoryBins,
    MonitoringBaseline,
    NumericBins,
)
from cobrand.errors import InvalidRequest
from cobrand.metrics import PsiVerdict, psi_from_shares, psi_verdict
from cobrand.preprocess import FIRST_KNOWN_INDEX, MISSING_INDEX, UNSEEN_INDEX
from gateway.application import FieldValue
from gateway.audit_record import AuditRecord, PartnerSliceStatus
from gateway.config import Decision
from gateway.scoring import RISK

__all__ = [
    "DecisionRates",
    "StabilityReport",
    "VariableKind",
    "VariableStability",
    "decision_rates",
    "latest_version",
    "stability_report",
]

_MISSING: Final = "missing"


class VariableKind(StrEnum):
    """What a monitored variable is."""

    SCORE = "score"
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


@dataclass(frozen=True, slots=True)
class VariableStability:
    """One variable's baseline and recent shares per bin, and their PSI.

    Attributes
    ----------
    name : str
        The task (for the score) or the bank feature.
    kind : VariableKind
    bins : tuple of str
        A label per bin: ``< a``, ``[a, b)``, ``>= b`` and ``missing`` for numeric bins,
        `OTHER_OR_MISSING` and the categories for categorical ones.
    expected : tuple of float
        Training share per bin.
    actual : tuple of float
        Share per bin in the window.
    psi : float
    band : PsiVerdict
    """

    name: str
    kind: VariableKind
    bins: tuple[str, ...]
    expected: tuple[float, ...]
    actual: tuple[float, ...]
    psi: float
    band: PsiVerdict


@dataclass(frozen=True, slots=True)
class DecisionRates:
    """How the window's decisions went.

    Attributes
    ----------
    decisions : int
    approve, refer, decline : float
        Share of decisions with each outcome.
    partner_fallback : float
        Share of decisions scored without the partner's slice.
    fallback_by_status : dict of str to float
        That share split by why the slice was not used (`PartnerSliceStatus`), every status
        but ``used`` listed, zero ones included.
    """

    decisions: int
    approve: float
    refer: float
    decline: float
    partner_fallback: float
    fallback_by_status: dict[str, float]


@dataclass(frozen=True, slots=True)
class StabilityReport:
    """The stability of one version's decisions over a window.

    Attributes
    ----------
    model_version : str
    since, until : datetime.datetime
        The window, ``[since, until)``, in UTC.
    baseline_rows : int
        Training rows behind the baseline shares.
    rates : DecisionRates
    variables : tuple of VariableStability
        The risk probability first, then the numeric and the categorical bank features.
    """

    model_version: str
    since: dt.datetime
    until: dt.datetime
    baseline_rows: int
    rates: DecisionRates
    variables: tuple[VariableStability, ...]

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready mapping (times ISO 8601, bands by name)."""
        return {
            "model_version": self.model_version,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "baseline_rows": self.baseline_rows,
            "rates": {
                "decisions": self.rates.decisions,
                "approve": self.rates.approve,
                "refer": self.rates.refer,
                "decline": self.rates.decline,
                "partner_fallback": self.rates.partner_fallback,
                "fallback_by_status": dict(self.rates.fallback_by_status),
            },
            "variables": [
                {
                    "name": v.name,
                    "kind": v.kind.value,
                    "psi": v.psi,
                    "band": v.band.value,
                    "bins": list(v.bins),
                    "expected": list(v.expected),
                    "actual": list(v.actual),
                }
                for v in self.variables
            ],
        }


def latest_version(records: Sequence[AuditRecord]) -> str:
    """The version of the most recent decision in `records`.

    Raises
    ------
    InvalidRequest
        `records` is empty.
    """
    if not records:
        raise InvalidRequest("no decisions to take the latest model version from")
    return max(records, key=lambda record: record.decided_at).model_version


def decision_rates(records: Sequence[AuditRecord]) -> DecisionRates:
    """Outcome and partner-fallback shares of `records`.

    Raises
    ------
    InvalidRequest
        `records` is empty.
    """
    total = len(records)
    if total == 0:
        raise InvalidRequest("no decisions to compute rates of")
    outcomes = {decision: 0 for decision in Decision}
    statuses = {status: 0 for status in PartnerSliceStatus}
    for record in records:
        outcomes[record.result.decision] += 1
        statuses[record.partner_status] += 1
    return DecisionRates(
        decisions=total,
        approve=outcomes[Decision.APPROVE] / total,
        refer=outcomes[Decision.REFER] / total,
        decline=outcomes[Decision.DECLINE] / total,
        partner_fallback=1.0 - statuses[PartnerSliceStatus.USED] / total,
        fallback_by_status={
            status.value: count / total
            for status, count in statuses.items()
            if status is not PartnerSliceStatus.USED
        },
    )


def stability_report(
    records: Sequence[AuditRecord],
    baseline: MonitoringBaseline,
    *,
    model_version: str,
    since: dt.datetime,
    until: dt.datetime,
) -> StabilityReport:
    """Compare `records` (decisions of `model_version`) with the version's `baseline`.

    Raises
    ------
    InvalidRequest
        `records` is empty, holds a decision of another version, the baseline has no
        ``risk`` score, or a recorded feature has the wrong type for its baseline (named).
    """
    if not records:
        raise InvalidRequest(f"no decisions of model version {model_version} to monitor")
    other = next((r for r in records if r.model_version != model_version), None)
    if other is not None:
        raise InvalidRequest(
            f"decision {other.request_id} is of model version {other.model_version}, "
            f"not {model_version}"
        )
    if RISK not in baseline.scores:
        raise InvalidRequest(
            f"model version {model_version}: the monitoring baseline has no {RISK!r} score"
        )
    risk = [record.result.probability_of_default for record in records]
    variables = [_numeric(RISK, VariableKind.SCORE, baseline.scores[RISK], risk)]
    for name, bins in baseline.numeric.items():
        values = [_number(record, name) for record in records]
        variables.append(_numeric(name, VariableKind.NUMERIC, bins, values))
    for name, categories in baseline.categorical.items():
        encoding = {c: FIRST_KNOWN_INDEX + i for i, c in enumerate(categories.categories)}
        indices = [_category_index(record, name, encoding) for record in records]
        variables.append(_categorical(name, categories, indices))
    return StabilityReport(
        model_version=model_version,
        since=since.astimezone(dt.UTC),
        until=until.astimezone(dt.UTC),
        baseline_rows=baseline.rows,
        rates=decision_rates(records),
        variables=tuple(variables),
    )


def _numeric(
    name: str, kind: VariableKind, bins: NumericBins, values: Sequence[float]
) -> VariableStability:
    return _stability(name, kind, _numeric_labels(bins.edges), bins.shares, bins.counts(values))


def _categorical(name: str, bins: CategoryBins, indices: Sequence[int]) -> VariableStability:
    labels = (OTHER_OR_MISSING, *bins.categories)
    counts = bins.counts(np.asarray(indices, dtype=np.int64))
    return _stability(name, VariableKind.CATEGORICAL, labels, bins.shares, counts)


def _stability(
    name: str,
    kind: VariableKind,
    labels: tuple[str, ...],
    expected: tuple[float, ...],
    counts: npt.NDArray[np.int64],
) -> VariableStability:
    actual = tuple(float(share) for share in counts / counts.sum())
    value = psi_from_shares(expected=expected, actual=actual)
    return VariableStability(name, kind, labels, expected, actual, value, psi_verdict(value))


def _numeric_labels(edges: tuple[float, ...]) -> tuple[str, ...]:
    if not edges:
        return ("all", _MISSING)
    inner = [f"[{a:.4g}, {b:.4g})" for a, b in pairwise(edges)]
    return (f"< {edges[0]:.4g}", *inner, f">= {edges[-1]:.4g}", _MISSING)


def _field(record: AuditRecord, name: str) -> FieldValue:
    # A feature absent from the record was not scored with a value: count it as missing.
    return record.bank_features.get(name)


def _number(record: AuditRecord, name: str) -> float:
    value = _field(record, name)
    if value is None:
        return math.nan
    if isinstance(value, str):
        raise InvalidRequest(
            f"decision {record.request_id}: bank feature {name!r} is the category {value!r}; "
            "the baseline bins it as a number"
        )
    return value


def _category_index(record: AuditRecord, name: str, encoding: Mapping[str, int]) -> int:
    value = _field(record, name)
    if value is None:
        return MISSING_INDEX
    if not isinstance(value, str):
        raise InvalidRequest(
            f"decision {record.request_id}: bank feature {name!r} is the number {value}; "
            "the baseline bins it as a category"
        )
    return encoding.get(value, UNSEEN_INDEX)
