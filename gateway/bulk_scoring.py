"""The scoring core in bulk: many aligned customers' campaign propensities, decided in arrays.

`BulkScorer` is `gateway.scoring.Scorer` for campaigns: the same loaded version and decision
configuration, but whole batches of rows per forward pass and the policy applied with numpy
instead of row by row, and only one task's answer, without reason codes. Its results are the
Scorer's for the same rows: a customer the policy declines (by score or by a hard rule) gets no
offer; the instalment offer and channel come from the rule table; a rights package is offered
only when eligible (enabled, ``min_age`` and ``min_limit_minor`` against the customer's age and
initial limit), the best by propensity, ties in configuration order.

`BulkScorer.prepare` encodes the bank's aligned table in one vectorised pass with the version's
own preprocessor (as training encoded it) and evaluates the hard rules over its raw values;
`BulkScorer.score` then takes a slice of those rows and the partner's embeddings of them. A row
whose embedding is missing is scored through the head's partner-missing path (bank-only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bank_node.model_registry import BankVersion
from cobrand.errors import ConfigError, FailedPrecondition
from cobrand.tables import PartyTable
from gateway.config import Decision, DecisionConfig, HardRule
from gateway.scoring import INSTALMENT, RIGHTS_PACKAGE, RISK, Scorer, sigmoid

__all__ = ["TASKS", "AlignedBank", "BulkScorer", "BulkScores"]

TASKS = (INSTALMENT, RIGHTS_PACKAGE)
"""The campaign tasks bulk scoring answers."""

_DECLINE = Decision.DECLINE.severity
_REFER = Decision.REFER.severity


@dataclass(frozen=True)
class AlignedBank:
    """The bank's aligned rows, encoded, with what the policy reads of their raw values.

    Attributes
    ----------
    numeric : ndarray of float32, shape (n, d)
    categorical : ndarray of int64, shape (n, c)
        As ``Preprocessor.transform`` encodes them.
    rule_severity : ndarray of int8, shape (n,)
        The most severe outcome of the hard rules each row triggers (`Decision.severity`, 0
        when none triggers).
    age : ndarray of float64, shape (n,)
        The configured age field, NaN where missing or not configured.
    """

    numeric: npt.NDArray[np.float32]
    categorical: npt.NDArray[np.int64]
    rule_severity: npt.NDArray[np.int8]
    age: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.numeric)


@dataclass(frozen=True)
class BulkScores:
    """One task's answer for a run of rows.

    Attributes
    ----------
    propensity : ndarray of float64, shape (n,)
        The instalment propensity, or the offered package's; NaN where there is no offer.
    offer : ndarray of str (object), shape (n,)
        The instalment offer or the package; empty where there is no offer (declined, or no
        package eligible).
    channel : ndarray of str (object), shape (n,)
        The instalment offer's channel; empty for packages and where there is no offer.
    partner_missing : ndarray of bool, shape (n,)
        Scored bank-only: the partner held no embedding of the row.
    """

    propensity: npt.NDArray[np.float64]
    offer: npt.NDArray[np.object_]
    channel: npt.NDArray[np.object_]
    partner_missing: npt.NDArray[np.bool_]

    @staticmethod
    def concatenate(parts: Sequence[BulkScores]) -> BulkScores:
        """The scores of consecutive runs of rows as one."""
        return BulkScores(
            propensity=np.concatenate([p.propensity for p in parts]),
            offer=np.concatenate([p.offer for p in parts]),
            channel=np.concatenate([p.channel for p in parts]),
            partner_missing=np.concatenate([p.partner_missing for p in parts]),
        )


class BulkScorer:
    """A loaded bank version and the decision configuration, scoring batches for one task.

    Parameters
    ----------
    version : BankVersion
        Must have a binary ``risk`` task and `task`.
    config : DecisionConfig
        Needs an instalment rule table for ``instalment``, packages for ``rights_package``.
    task : {"instalment", "rights_package"}

    Raises
    ------
    ConfigError
        An unknown task, a configuration without what the task needs, or naming a field or
        package the version lacks (as `Scorer` refuses it).
    FailedPrecondition
        The version has no binary risk task, or not the task.
    """

    def __init__(
        self,
        version: BankVersion,
        config: DecisionConfig,
        task: str,
    ) -> None:
        if task not in TASKS:
            raise ConfigError(f"task {task!r}: not a campaign task ({', '.join(TASKS)})")
        # The per-application scorer checks the version and the configuration against each
        # other (risk task, fields, package classes): the same checks hold here.
        scorer = Scorer(version, config)
        if task not in version.tasks:
            raise FailedPrecondition(
                f"model version {version.manifest.version_id} has no {task} task"
            )
        if task == INSTALMENT and config.instalment is None:
            raise ConfigError("key 'instalment': the decision configuration has no rule table")
        if task == RIGHTS_PACKAGE and not config.packages:
            raise ConfigError("key 'packages': the decision configuration offers none")
        self.version = version
        self.config = config
        self.task = task
        self.partner_width = scorer.partner_width
        # The per-application scorer's forward pass: a campaign and an application of the
        # same customer are scored by one formula.
        self._forward_pass = scorer.forward_pass
        self._numeric = [s.name for s in version.preprocessor.numeric]
        self._categorical = [s.name for s in version.preprocessor.categorical]
        self._scaling = config.score_scaling or version.scaling
        # Column of each configured package in the model's output, in configuration order (the
        # scorer checked each is one of the version's classes).
        self._package_columns = (
            [version.classes[RIGHTS_PACKAGE].index(p.name) for p in config.packages]
            if task == RIGHTS_PACKAGE
            else []
        )

    def prepare(self, table: PartyTable) -> AlignedBank:
        """Encode the bank's aligned rows and evaluate the hard rules over them, in one pass.

        Parameters
        ----------
        table : PartyTable
            The bank's table in alignment order, loaded with the version's schema.
        """
        encoded = self.version.preprocessor.transform(table)
        severity = np.zeros(len(table), dtype=np.int8)
        for rule in self.config.hard_rules:
            hit = self._triggers(rule, table)
            severity[hit] = np.maximum(severity[hit], Decision(rule.outcome).severity)
        age_field = self.config.application.age_field
        age = (
            table.numeric[:, self._numeric.index(age_field)].astype(np.float64)
            if age_field is not None
            else np.full(len(table), np.nan)
        )
        return AlignedBank(encoded.numeric, encoded.categorical, severity, age)

    def _triggers(self, rule: HardRule, table: PartyTable) -> npt.NDArray[np.bool_]:
        """`HardRule.triggers` over a whole column of raw values."""
        if isinstance(rule.value, float):
            values = table.numeric[:, self._numeric.index(rule.field)].astype(np.float64)
            missing = np.isnan(values)
            with np.errstate(invalid="ignore"):
                hit = {
                    "lt": values < rule.value,
                    "le": values <= rule.value,
                    "gt": values > rule.value,
                    "ge": values >= rule.value,
                }[rule.operator]
        else:
            column = table.categorical[:, self._categorical.index(rule.field)]
            # Read as the application encoder reads a category: trimmed, lower case, blank missing.
            text = np.array(
                [v.strip().lower() if isinstance(v, str) else "" for v in column], dtype=object
            )
            missing = text == ""
            inside = np.isin(text, [c.lower() for c in rule.value])
            hit = inside if rule.operator == "in" else ~inside
        return np.where(missing, rule.when_missing == "trigger", hit)

    def score(
        self,
        bank: AlignedBank,
        rows: slice,
        partner: npt.NDArray[np.float32],
        found: npt.NDArray[np.bool_],
    ) -> BulkScores:
        """Score a run of the prepared rows with the partner's embeddings of them.

        Parameters
        ----------
        bank : AlignedBank
            From `prepare`.
        rows : slice
            The run of rows (step 1).
        partner : ndarray of float32, shape (len(rows), partner_width)
            The partner's embeddings for this version, zeros where not found.
        found : ndarray of bool, shape (len(rows),)
            False where the partner holds no embedding: that row is scored bank-only.
        """
        logits = self._forward(bank, rows, partner, found)
        risk = sigmoid(logits[RISK])
        points = self._scaling.points(risk)
        score = np.floor(points + 0.5)
        severity = np.maximum(self._threshold_severity(risk, score), bank.rule_severity[rows])
        # An approval below every band is referred with no limit; either way it keeps 0 here.
        limit = np.zeros(len(score), dtype=np.int64)
        # Bands run from the highest threshold down: assigning from the lowest up leaves each
        # score with the first band it reaches.
        for band in reversed(self.config.credit_limits.bands):
            reached = score >= band.min_score
            limit[reached] = band.limit_minor
        declined = severity == _DECLINE
        limit[declined] = 0
        count = len(score)
        offer = np.full(count, "", dtype=object)
        channel = np.full(count, "", dtype=object)
        propensity = np.full(count, math.nan)
        if self.task == INSTALMENT:
            assert self.config.instalment is not None
            propensity = sigmoid(logits[INSTALMENT])
            for rule in reversed(self.config.instalment.bands):
                reached = propensity >= rule.min_propensity
                offer[reached] = rule.offer
                channel[reached] = rule.channel.value
            offered = ~declined
        else:
            shares = _softmax_rows(logits[RIGHTS_PACKAGE])[:, self._package_columns]
            eligible = np.column_stack(
                [
                    self._eligible(p_index, bank.age[rows], limit)
                    for p_index in range(shares.shape[1])
                ]
            )
            masked = np.where(eligible, shares, -np.inf)
            # argmax takes the first of equal maxima: ties keep configuration order.
            top = masked.argmax(axis=1)
            offered = ~declined & eligible.any(axis=1)
            names = np.array([p.name for p in self.config.packages], dtype=object)
            offer = np.where(offered, names[top], "")
            propensity = masked[np.arange(count), top]
        propensity = np.where(offered, propensity, math.nan)
        return BulkScores(
            propensity=propensity,
            offer=np.where(offered, offer, "").astype(object),
            channel=np.where(offered, channel, "").astype(object),
            partner_missing=~found,
        )

    def _eligible(
        self, index: int, age: npt.NDArray[np.float64], limit: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.bool_]:
        package = self.config.packages[index]
        eligible = np.full(len(age), package.enabled)
        if package.min_age is not None:
            # NaN compares False: an unknown age is not eligible.
            eligible &= age >= package.min_age
        if package.min_limit_minor is not None:
            eligible &= limit >= package.min_limit_minor
        return eligible

    def _threshold_severity(
        self, risk: npt.NDArray[np.float64], score: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.int8]:
        thresholds = self.config.thresholds
        if thresholds.basis == "probability_of_default":
            decline = risk >= thresholds.decline_from
            approve = risk < thresholds.approve_below
        else:
            decline = score < thresholds.decline_below
            approve = score >= thresholds.approve_from
        severity = np.full(len(risk), _REFER, dtype=np.int8)
        severity[approve] = 0
        severity[decline] = _DECLINE
        return severity

    def _forward(
        self,
        bank: AlignedBank,
        rows: slice,
        partner: npt.NDArray[np.float32],
        found: npt.NDArray[np.bool_],
    ) -> dict[str, npt.NDArray[np.float64]]:
        embedding = self._forward_pass.bank_embedding(bank.numeric[rows], bank.categorical[rows])
        logits = self._forward_pass.logits(embedding, partner, ~found)
        return {task: out.astype(np.float64) for task, out in logits.items()}


def _softmax_rows(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: npt.NDArray[np.float64] = shifted / shifted.sum(axis=1, keepdims=True)
    return result
