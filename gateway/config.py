"""The gateway's decision configuration: thresholds, hard rules, limits, packages and offers.

A risk team's policy, kept apart from the model: which applications are approved, referred or
declined, with what initial credit limit, and what is offered to them. Read from YAML with
`load_decision_config` (unknown keys refused, every error naming the file and the key); checked
against a model version's bank features with `DecisionConfig.check_fields`. Two documented
examples ship beside this module: ``gateway/examples/cobrand_synth.yaml`` (the synthetic
co-brand set) and ``gateway/examples/default_credit.yaml``.

Scores are points of `bank_node.serving_reference.ScoreScaling`, where the odds run good to
bad: a higher score is a lower risk. Every band table (score bands, limit bands, instalment
bands) is written from the highest threshold down and a value falls in the first band whose
threshold it reaches.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Literal

import pydantic
from pydantic import ConfigDict, Field, StringConstraints

from bank_node.serving_reference import ScoreScaling
from cobrand.errors import ConfigError
from cobrand.yamlfile import load_yaml_model

__all__ = [
    "ApplicationRules",
    "CreditLimits",
    "Decision",
    "DecisionConfig",
    "HardRule",
    "InstalmentBand",
    "InstalmentRules",
    "LimitBand",
    "OfferChannel",
    "ProbabilityThresholds",
    "RightsPackage",
    "ScoreBand",
    "ScoreThresholds",
    "load_decision_config",
]

Name = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class Decision(StrEnum):
    """The outcome of an application, in increasing severity."""

    APPROVE = "approve"
    REFER = "refer"
    DECLINE = "decline"

    @property
    def severity(self) -> int:
        """0 approve, 1 refer, 2 decline: the most severe of several outcomes wins."""
        return list(Decision).index(self)


class OfferChannel(StrEnum):
    """Where an instalment offer is made (``none``: propensity too low to contact)."""

    BANK_APP_PUSH = "bank_app_push"
    PARTNER_APP = "partner_app"
    SMS = "sms"
    CALL_CENTRE = "call_centre"
    NONE = "none"


class _Section(pydantic.BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _descending(values: Sequence[float], what: str) -> None:
    if any(later >= earlier for earlier, later in pairwise(values)):
        raise ValueError(f"bands must be listed by strictly decreasing {what}")


def _unique(names: Sequence[str], what: str) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{what} listed more than once: {', '.join(repeated)}")


class ApplicationRules(_Section):
    """What a bank schema cannot say about application fields (it only names and types them).

    Attributes
    ----------
    required : tuple of str
        Fields an application must give (or the bank's stored row must fill).
    non_negative : tuple of str
        Numeric fields (amounts, counts) refused when negative.
    categories : mapping of str to tuple of str
        Closed sets of categorical fields, compared trimmed and case-insensitively as the
        preprocessor reads them; a value outside is refused. A categorical field not listed is
        free text, and a value training never saw encodes as unseen, as it did in training.
    age_field : str, optional
        The numeric field holding the applicant's age, for the packages' ``min_age``.
    """

    required: tuple[Name, ...] = ()
    non_negative: tuple[Name, ...] = ()
    categories: dict[Name, Annotated[tuple[Name, ...], Field(min_length=1)]] = {}
    age_field: Name | None = None


class ProbabilityThresholds(_Section):
    """Decide by probability of default: approve below one, decline from the other."""

    basis: Literal["probability_of_default"]
    approve_below: Probability
    decline_from: Probability

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> ProbabilityThresholds:
        if self.approve_below > self.decline_from:
            raise ValueError("approve_below must not exceed decline_from")
        return self

    def decide(self, probability: float, score: int) -> Decision:
        """Approve below `approve_below`, decline from `decline_from`, refer between."""
        if probability >= self.decline_from:
            return Decision.DECLINE
        return Decision.APPROVE if probability < self.approve_below else Decision.REFER


class ScoreThresholds(_Section):
    """Decide by score (higher is better): approve from one, decline below the other."""

    basis: Literal["score"]
    approve_from: int
    decline_below: int

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> ScoreThresholds:
        if self.decline_below > self.approve_from:
            raise ValueError("decline_below must not exceed approve_from")
        return self

    def decide(self, probability: float, score: int) -> Decision:
        """Approve from `approve_from`, decline below `decline_below`, refer between."""
        if score < self.decline_below:
            return Decision.DECLINE
        return Decision.APPROVE if score >= self.approve_from else Decision.REFER


Thresholds = Annotated[ProbabilityThresholds | ScoreThresholds, Field(discriminator="basis")]

_NUMERIC_OPERATORS = ("lt", "le", "gt", "ge")


class HardRule(_Section):
    """A policy rule over one application field that overrides the model when it triggers.

    The rule triggers when ``<field> <operator> <value>`` holds: ``lt le gt ge`` compare a
    numeric field with a number, ``in not_in`` a categorical field with a list of categories
    (compared as the preprocessor reads them: trimmed, lower case). E.g. a minimum age of 18
    is ``{field: age, operator: lt, value: 18, outcome: decline, ...}``.

    Attributes
    ----------
    field : str
    operator : {"lt", "le", "gt", "ge", "in", "not_in"}
    value : float or tuple of str
    outcome : {"refer", "decline"}
    code : str
        Stable reason code, ``H`` and two or more digits.
    text : str
        The reason as shown.
    when_missing : {"trigger", "pass"}, default "trigger"
        Whether a missing value triggers the rule (the safe default: a rule that cannot be
        checked does not pass).
    """

    field: Name
    operator: Literal["lt", "le", "gt", "ge", "in", "not_in"]
    value: float | tuple[Name, ...]
    outcome: Literal[Decision.REFER, Decision.DECLINE]
    code: Annotated[str, Field(pattern=r"^H[0-9]{2,}$")]
    text: Name
    when_missing: Literal["trigger", "pass"] = "trigger"

    @pydantic.model_validator(mode="after")
    def _value_fits_operator(self) -> HardRule:
        numeric = self.operator in _NUMERIC_OPERATORS
        if numeric != isinstance(self.value, float):
            raise ValueError(
                f"operator {self.operator} needs "
                + ("a number" if numeric else "a list of categories")
                + " as its value"
            )
        return self

    @property
    def numeric(self) -> bool:
        """Whether the rule compares a number (else categories)."""
        return self.operator in _NUMERIC_OPERATORS

    def triggers(self, value: float | str | None) -> bool:
        """Whether the rule applies to an applicant's value (None when missing)."""
        if value is None:
            return self.when_missing == "trigger"
        if isinstance(self.value, float):
            assert isinstance(value, float)
            bound = self.value
            return {
                "lt": value < bound,
                "le": value <= bound,
                "gt": value > bound,
                "ge": value >= bound,
            }[self.operator]
        inside = str(value).strip().lower() in {c.lower() for c in self.value}
        return inside if self.operator == "in" else not inside


class ScoreBand(_Section):
    """A score band label (e.g. ``A``) for scores from `min_score`."""

    band: Name
    min_score: int


class LimitBand(_Section):
    """An initial credit limit, in minor units of the matrix currency, for scores from
    `min_score`."""

    band: Name
    min_score: int
    limit_minor: Annotated[int, Field(ge=0)]


class CreditLimits(_Section):
    """The initial credit-limit matrix by score band.

    An approval needs a limit: an application whose score is below every band is referred.
    A declined application gets no limit (0) and no band.
    """

    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    bands: Annotated[tuple[LimitBand, ...], Field(min_length=1)]

    @pydantic.field_validator("bands")
    @classmethod
    def _ordered(cls, bands: tuple[LimitBand, ...]) -> tuple[LimitBand, ...]:
        _descending([b.min_score for b in bands], "min_score")
        _unique([b.band for b in bands], "bands")
        return bands

    def band_for(self, score: int) -> LimitBand | None:
        """The first band whose `min_score` the score reaches, None below every band."""
        return next((b for b in self.bands if score >= b.min_score), None)


class RightsPackage(_Section):
    """One rights package as offered now (a configuration snapshot of its availability).

    Attributes
    ----------
    name : str
        A class of the model's ``rights_package`` task.
    enabled : bool, default True
        A disabled package is never offered.
    min_age : int, optional
        Applicants younger, or of unknown age, are not offered it.
    min_limit_minor : int, optional
        Applications with a lower initial limit are not offered it.
    """

    name: Name
    enabled: bool = True
    min_age: Annotated[int, Field(ge=0)] | None = None
    min_limit_minor: Annotated[int, Field(ge=0)] | None = None


class InstalmentBand(_Section):
    """The offer and channel for instalment propensities from `min_propensity`."""

    min_propensity: Probability
    offer: Name
    channel: OfferChannel


class InstalmentRules(_Section):
    """The instalment rule table; its last band starts at 0, so every propensity has one."""

    bands: Annotated[tuple[InstalmentBand, ...], Field(min_length=1)]

    @pydantic.field_validator("bands")
    @classmethod
    def _cover(cls, bands: tuple[InstalmentBand, ...]) -> tuple[InstalmentBand, ...]:
        _descending([b.min_propensity for b in bands], "min_propensity")
        if bands[-1].min_propensity != 0.0:
            raise ValueError("the last band must start at min_propensity 0")
        return bands

    def band_for(self, propensity: float) -> InstalmentBand:
        """The first band whose `min_propensity` the propensity reaches."""
        return next(b for b in self.bands if propensity >= b.min_propensity)


class DecisionConfig(_Section):
    """The gateway's decision configuration (see the module docstring and the examples).

    Attributes
    ----------
    application : ApplicationRules
    score_scaling : ScoreScaling, optional
        Overrides the model version's scaling.
    thresholds : ProbabilityThresholds or ScoreThresholds
        Chosen by ``basis: probability_of_default`` or ``basis: score``.
    hard_rules : tuple of HardRule
        The most severe outcome of the model and every triggered rule wins.
    score_bands : tuple of ScoreBand
        Labels of score ranges; a score below every band has none.
    credit_limits : CreditLimits
    packages : tuple of RightsPackage
        In tie-breaking order; only these are ever offered.
    instalment : InstalmentRules, optional
        Without it no instalment offer is made.
    """

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 (hex) of the configuration's canonical JSON: what a decision is recorded
        with, so a replay can tell whether it uses the same configuration."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    application: ApplicationRules = ApplicationRules()
    score_scaling: ScoreScaling | None = None
    thresholds: Thresholds
    hard_rules: tuple[HardRule, ...] = ()
    score_bands: tuple[ScoreBand, ...] = ()
    credit_limits: CreditLimits
    packages: tuple[RightsPackage, ...] = ()
    instalment: InstalmentRules | None = None

    @pydantic.field_validator("hard_rules")
    @classmethod
    def _unique_codes(cls, rules: tuple[HardRule, ...]) -> tuple[HardRule, ...]:
        _unique([r.code for r in rules], "codes")
        return rules

    @pydantic.field_validator("score_bands")
    @classmethod
    def _ordered_bands(cls, bands: tuple[ScoreBand, ...]) -> tuple[ScoreBand, ...]:
        _descending([b.min_score for b in bands], "min_score")
        _unique([b.band for b in bands], "bands")
        return bands

    @pydantic.field_validator("packages")
    @classmethod
    def _unique_packages(cls, packages: tuple[RightsPackage, ...]) -> tuple[RightsPackage, ...]:
        _unique([p.name for p in packages], "packages")
        return packages

    def score_band(self, score: int) -> str:
        """The label of the first score band the score reaches; empty below every band."""
        return next((b.band for b in self.score_bands if score >= b.min_score), "")

    def check_fields(self, numeric: Sequence[str], categorical: Sequence[str]) -> None:
        """Refuse settings naming a field the model's bank features lack, or of the wrong kind.

        Parameters
        ----------
        numeric, categorical : sequence of str
            The version's bank features (its preprocessor's, in order).

        Raises
        ------
        ConfigError
            Naming the key, e.g. ``key 'hard_rules[0].field': 'agee' is not a numeric bank
            feature of the model``.
        """
        kinds = {**{name: "numeric" for name in numeric}, **{n: "categorical" for n in categorical}}
        # (key, field, the kind it needs or None for either)
        wanted: list[tuple[str, str, str | None]] = [
            (f"application.required[{i}]", n, None) for i, n in enumerate(self.application.required)
        ]
        wanted += [
            (f"application.non_negative[{i}]", name, "numeric")
            for i, name in enumerate(self.application.non_negative)
        ]
        wanted += [
            (f"application.categories.{name}", name, "categorical")
            for name in self.application.categories
        ]
        if self.application.age_field is not None:
            wanted.append(("application.age_field", self.application.age_field, "numeric"))
        wanted += [
            (f"hard_rules[{i}].field", rule.field, "numeric" if rule.numeric else "categorical")
            for i, rule in enumerate(self.hard_rules)
        ]
        for key, name, kind in wanted:
            if name not in kinds or (kind is not None and kinds[name] != kind):
                raise ConfigError(
                    f"key '{key}': {name!r} is not a {kind or ''}{' ' if kind else ''}bank "
                    f"feature of the model (numeric: {', '.join(numeric) or 'none'}; "
                    f"categorical: {', '.join(categorical) or 'none'})"
                )
        if self.application.age_field is None:
            for i, package in enumerate(self.packages):
                if package.min_age is not None:
                    raise ConfigError(
                        f"key 'packages[{i}].min_age': needs application.age_field, the field "
                        "holding the applicant's age"
                    )


def load_decision_config(path: Path) -> DecisionConfig:
    """Read and validate a decision configuration file.

    Raises
    ------
    ConfigError
        Naming the file and every offending key: unreadable or invalid YAML, an unknown or
        missing key, thresholds out of order, bands not decreasing, a rule whose value does
        not fit its operator, a code or package listed twice.
    """
    return load_yaml_model(path, DecisionConfig, ConfigError)
