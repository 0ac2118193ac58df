"""The gateway's scoring core: one application's bank row (and partner embedding) to a decision.

`Scorer` holds a loaded bank model version and the decision configuration. `Scorer.score`
runs one forward pass (`gateway.forward_pass`, the one bulk scoring runs too) over a few rows:
the applicant, one copy per bank feature set to the version's reference value
(`bank_node.serving_reference.attribution_batch`, as `ReferenceRows` sets them) and, when
the partner's embedding is used, the applicant without it (the head's partner-missing path).
From that pass come the probability of default, the score, every reason's points and the
package and instalment propensities; then the configuration decides (`gateway.policy`).

Scores are `ScoreScaling` points where the odds run good to bad: a higher score is a lower
risk. A probability is the sigmoid of the model's float32 logit, taken in float64; the score is
its points rounded half up. Reasons are at most four codes whose actual value lowered the score
most against its reference: bank features by their code (``B01``...) and the partner's slice
as the one aggregated code ``P01``, which names no partner feature and appears only when it
ranks in the top four.

Without a partner embedding (partner down, applicant unknown to it, no consent) the head scores
the bank slice alone, and the result says so (`SlicesUsed.partner` False). The same inputs give
the same result, bit for bit, which replaying an audited decision relies on.

`partner_view` is what the partner's channel may see of a result: the decision, the limit band
and the packages; never the score, the probability or the reasons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from bank_node.model_registry import BankVersion
from bank_node.serving_reference import FeatureReference, adverse_reasons
from cobrand.errors import ConfigError, FailedPrecondition, InvalidRequest
from gateway.application import ApplicationEncoder, BankRow, FieldValue
from gateway.config import Decision, DecisionConfig
from gateway.forward_pass import BankForward
from gateway.policy import (
    InstalmentOffer,
    PackageOffer,
    RuleHit,
    credit_limit,
    decide,
    instalment_offer,
    offer_packages,
)

__all__ = [
    "INSTALMENT",
    "MAX_REASONS",
    "RIGHTS_PACKAGE",
    "RISK",
    "PartnerView",
    "Reason",
    "ReferenceRows",
    "ScoreResult",
    "Scorer",
    "SlicesUsed",
    "partner_view",
    "sigmoid",
]

RISK: Final = "risk"
INSTALMENT: Final = "instalment"
RIGHTS_PACKAGE: Final = "rights_package"
MAX_REASONS: Final = 4


@dataclass(frozen=True)
class Reason:
    """A reason code with its text and the points it cost against the reference applicant."""

    code: str
    text: str
    points: float


@dataclass(frozen=True)
class SlicesUsed:
    """Which slices the decision used: always the bank's; the partner's when its embedding was."""

    bank: bool
    partner: bool


@dataclass(frozen=True)
class ScoreResult:
    """One scored application, ready to be recorded and turned into a reply.

    Attributes
    ----------
    model_version : str
    probability_of_default : float
    score : int
        Points; higher is lower risk.
    score_band : str
        Empty below every configured score band.
    decision : Decision
    rule_hits : tuple of RuleHit
        Hard rules that triggered, in configuration order.
    credit_limit_minor : int
        In minor units of `currency`; 0 when declined.
    currency : str
    limit_band : str
        Empty when declined.
    reasons : tuple of Reason
        At most four, most points lost first.
    packages : tuple of PackageOffer
        Eligible packages, best first; none when declined or without the task.
    instalment : InstalmentOffer or None
        None when declined, without the task or without a rule table.
    slices : SlicesUsed
    """

    model_version: str
    probability_of_default: float
    score: int
    score_band: str
    decision: Decision
    rule_hits: tuple[RuleHit, ...]
    credit_limit_minor: int
    currency: str
    limit_band: str
    reasons: tuple[Reason, ...]
    packages: tuple[PackageOffer, ...]
    instalment: InstalmentOffer | None
    slices: SlicesUsed


@dataclass(frozen=True)
class PartnerView:
    """What the partner's channel sees of a decision: no score, probability or reasons."""

    decision: Decision
    limit_band: str
    packages: tuple[PackageOffer, ...]


def partner_view(result: ScoreResult) -> PartnerView:
    """The part of `result` the co-brand partner's channel may see."""
    return PartnerView(
        decision=result.decision, limit_band=result.limit_band, packages=result.packages
    )


class Scorer:
    """A bank model version and the decision configuration, ready to score applications.

    Parameters
    ----------
    version : BankVersion
        From `bank_node.model_registry.load_bank_version`; must have a binary ``risk`` task.
    config : DecisionConfig
        Its packages are named by the version's ``rights_package`` classes (``version.classes``,
        as training named them), never by the bank schema's current list.

    Raises
    ------
    FailedPrecondition
        The version has no binary risk task.
    ConfigError
        The configuration names a field the version lacks or of the wrong kind, or a package
        that is not one of the model's classes.
    """

    def __init__(self, version: BankVersion, config: DecisionConfig) -> None:
        version_id = version.manifest.version_id
        if version.tasks.get(RISK) != 1:
            raise FailedPrecondition(f"model version {version_id} has no binary {RISK} task")
        preprocessor = version.preprocessor
        config.check_fields(
            [s.name for s in preprocessor.numeric], [s.name for s in preprocessor.categorical]
        )
        classes = version.classes.get(RIGHTS_PACKAGE)
        for i, package in enumerate(config.packages):
            if classes is not None and package.name not in classes:
                raise ConfigError(
                    f"key 'packages[{i}].name': {package.name!r} is not a {RIGHTS_PACKAGE} "
                    f"class of model version {version_id} ({', '.join(classes)})"
                )
        self.version = version
        self.config = config
        self.encoder = ApplicationEncoder(preprocessor, config.application)
        self._scaling = config.score_scaling or version.scaling
        self._classes = classes or ()
        self._references = version.reasons.bank
        self._bank_codes = [ref.code for ref in self._references]
        self._reference_rows = ReferenceRows(self._references)
        self.forward_pass = BankForward(version.bottom, version.head)
        self.partner_width = self.forward_pass.partner_width
        # The partner-missing flags of both passes and the bank-only pass's zeroed partner
        # rows: the same every call, so made once (read-only, shared by the calling threads).
        rows = self._reference_rows.rows
        self._bank_only_missing = _constant(np.ones(rows, dtype=np.bool_))
        self._bank_only_partner = _constant(np.zeros((rows, self.partner_width), np.float32))
        self._with_partner_missing = _constant(np.arange(rows + 1) == rows)

    def score(self, row: BankRow, partner: npt.ArrayLike | None) -> ScoreResult:
        """Score one encoded application and decide it.

        Parameters
        ----------
        row : BankRow
            From ``self.encoder.encode``.
        partner : array_like of float, shape (partner_width,), or None
            The partner bottom's embedding of this applicant for this version; None when the
            partner's slice is missing (the result is then bank-only).

        Raises
        ------
        InvalidRequest
            The partner embedding has another shape or a value that is not finite.
        """
        embedding = None if partner is None else self._embedding(partner)
        logits = self._forward(row, embedding)
        risk = sigmoid(logits[RISK])
        points = self._scaling.points(risk)
        score = math.floor(points[0] + 0.5)
        probability = float(risk[0])
        decision, hits = decide(self.config, probability, score, row.values)
        decision, limit, band = credit_limit(self.config, decision, score)
        packages: tuple[PackageOffer, ...] = ()
        instalment = None
        if decision is not Decision.DECLINE:
            if RIGHTS_PACKAGE in logits:
                shares = _softmax(logits[RIGHTS_PACKAGE][0])
                age_field = self.config.application.age_field
                packages = offer_packages(
                    self.config,
                    dict(zip(self._classes, shares.tolist(), strict=True)),
                    row.values[age_field] if age_field is not None else None,
                    limit,
                )
            if INSTALMENT in logits:
                instalment = instalment_offer(self.config, float(sigmoid(logits[INSTALMENT])[0]))
        return ScoreResult(
            model_version=self.version.manifest.version_id,
            probability_of_default=probability,
            score=score,
            score_band=self.config.score_band(score),
            decision=decision,
            rule_hits=hits,
            credit_limit_minor=limit,
            currency=self.config.credit_limits.currency,
            limit_band=band,
            reasons=self._reasons(row, points, partner_used=embedding is not None),
            packages=packages,
            instalment=instalment,
            slices=SlicesUsed(bank=True, partner=embedding is not None),
        )

    def _embedding(self, partner: npt.ArrayLike) -> npt.NDArray[np.float32]:
        values = np.asarray(partner, dtype=np.float32)
        if values.shape != (self.partner_width,):
            raise InvalidRequest(
                f"partner embedding: expected {self.partner_width} values, got shape {values.shape}"
            )
        if not np.isfinite(values).all():
            raise InvalidRequest("partner embedding: holds a value that is not finite")
        return values

    def _forward(
        self, row: BankRow, partner: npt.NDArray[np.float32] | None
    ) -> dict[str, npt.NDArray[np.float64]]:
        """Logits per task for the applicant, each reference row and, with a partner
        embedding, the applicant without it (last row)."""
        numeric, categorical = self._reference_rows.batch(row.numeric, row.categorical)
        bank = self.forward_pass.bank_embedding(numeric, categorical)
        if partner is None:
            missing, partner_rows = self._bank_only_missing, self._bank_only_partner
        else:
            bank = np.concatenate([bank, bank[:1]])
            missing = self._with_partner_missing
            partner_rows = np.repeat(partner[np.newaxis], len(bank), axis=0)
        logits = self.forward_pass.logits(bank, partner_rows, missing)
        return {task: out.astype(np.float64) for task, out in logits.items()}

    def _reasons(
        self, row: BankRow, points: npt.NDArray[np.float64], *, partner_used: bool
    ) -> tuple[Reason, ...]:
        partner_reason = self.version.reasons.partner
        codes = [*self._bank_codes, partner_reason.code] if partner_used else self._bank_codes
        gains = points[1:] - points[0]
        chosen = adverse_reasons(float(points[0]), points[1:], codes, limit=MAX_REASONS)
        reasons = []
        for code in chosen:
            position = codes.index(code)
            if position < len(self._references):
                # Only the chosen reasons' texts are written out, with the applicant's value.
                reference = self._references[position]
                text = reference.text.replace("{value}", _shown(row.values[reference.feature]))
            else:
                text = partner_reason.text
            reasons.append(Reason(code=code, text=text, points=float(gains[position])))
        return tuple(reasons)


class ReferenceRows:
    """`bank_node.serving_reference.attribution_batch` for one version's references, their
    inputs gathered once: each call sets them all by one indexed assignment per kind of input
    instead of a Python loop over the references (the same rows, value for value).

    Parameters
    ----------
    references : sequence of FeatureReference

    Attributes
    ----------
    rows : int
        Rows of a batch: the applicant, then one per reference.
    """

    def __init__(self, references: tuple[FeatureReference, ...]) -> None:
        self.rows = 1 + len(references)
        numeric = [
            ((row, column), value)
            for row, reference in enumerate(references, start=1)
            for column, value in reference.numeric
        ]
        categorical = [
            ((row, column), index)
            for row, reference in enumerate(references, start=1)
            for column, index in reference.categorical
        ]
        self._numeric_at = _positions([cell for cell, _ in numeric])
        # Cast as assigning each value into the float32 batch casts it.
        self._numeric_values = np.array([value for _, value in numeric], dtype=np.float32)
        self._categorical_at = _positions([cell for cell, _ in categorical])
        self._categorical_values = np.array([index for _, index in categorical], dtype=np.int64)

    def batch(
        self, numeric: npt.NDArray[np.float32], categorical: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """The applicant's encoded row, then one copy per reference with its inputs set, as
        `attribution_batch` gives them."""
        numeric_rows = np.repeat(numeric.reshape(1, -1), self.rows, axis=0)
        numeric_rows[self._numeric_at] = self._numeric_values
        categorical_rows = np.repeat(categorical.reshape(1, -1), self.rows, axis=0)
        categorical_rows[self._categorical_at] = self._categorical_values
        return numeric_rows, categorical_rows


def _positions(
    cells: list[tuple[int, int]],
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Row and column indices of ``(row, column)`` cells, for one indexed assignment."""
    return (
        np.array([row for row, _ in cells], dtype=np.intp),
        np.array([column for _, column in cells], dtype=np.intp),
    )


def _constant(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """`array`, made read-only so the threads sharing it cannot change it."""
    array.flags.writeable = False
    return array


def sigmoid(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The probabilities of binary logits, as the gateway reports them (one and in bulk)."""
    # 1 / (1 + e^-x) without overflow for large negative logits.
    result: npt.NDArray[np.float64] = np.exp(-np.logaddexp(0.0, -logits))
    return result


def _softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = np.exp(logits - logits.max())
    result: npt.NDArray[np.float64] = shifted / shifted.sum()
    return result


def _shown(value: FieldValue) -> str:
    if value is None:
        return "missing"
    return f"{value:g}" if isinstance(value, float) else value
