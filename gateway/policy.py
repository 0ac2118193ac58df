"""The decision configuration applied to a model's outputs: pure functions, no model inside.

- `decide`: the thresholds' outcome, made more severe by any triggered hard rule;
- `credit_limit`: the initial limit and its band (none when declined; an approval below every
  band is referred, since an approval needs a limit);
- `offer_packages`: the model's package propensities, best first, with the configured
  availability and eligibility rules applied on top;
- `instalment_offer`: the instalment rule table's offer and channel for a propensity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.application import FieldValue
from gateway.config import Decision, DecisionConfig, OfferChannel

__all__ = [
    "InstalmentOffer",
    "PackageOffer",
    "RuleHit",
    "credit_limit",
    "decide",
    "instalment_offer",
    "offer_packages",
]


@dataclass(frozen=True)
class RuleHit:
    """A hard rule that triggered: its stable code, text and outcome."""

    code: str
    text: str
    outcome: Decision


@dataclass(frozen=True)
class PackageOffer:
    """An eligible rights package, with the model's propensity and its 1-based rank."""

    package: str
    propensity: float
    rank: int


@dataclass(frozen=True)
class InstalmentOffer:
    """The instalment propensity and the offer and channel the rule table gives it."""

    propensity: float
    offer: str
    channel: OfferChannel


def decide(
    config: DecisionConfig, probability: float, score: int, values: Mapping[str, FieldValue]
) -> tuple[Decision, tuple[RuleHit, ...]]:
    """The thresholds' decision, overridden by the most severe triggered hard rule.

    Parameters
    ----------
    config : DecisionConfig
    probability : float
        Probability of default.
    score : int
        Score in points (higher is lower risk).
    values : mapping of str to float, str or None
        The application's bank fields (`gateway.application.BankRow.values`).

    Returns
    -------
    decision : Decision
    hits : tuple of RuleHit
        Every triggered rule, in configuration order.
    """
    decision = config.thresholds.decide(probability, score)
    hits = tuple(
        RuleHit(code=rule.code, text=rule.text, outcome=Decision(rule.outcome))
        for rule in config.hard_rules
        if rule.triggers(values[rule.field])
    )
    for hit in hits:
        if hit.outcome.severity > decision.severity:
            decision = hit.outcome
    return decision, hits


def credit_limit(
    config: DecisionConfig, decision: Decision, score: int
) -> tuple[Decision, int, str]:
    """The initial limit in minor units and its band, with the decision it leaves.

    Returns
    -------
    decision : Decision
        Unchanged, except an approval below every band, which is referred.
    limit_minor : int
        0 when declined or below every band.
    band : str
        Empty when declined or below every band.
    """
    if decision is Decision.DECLINE:
        return decision, 0, ""
    band = config.credit_limits.band_for(score)
    if band is None:
        return Decision.REFER, 0, ""
    return decision, band.limit_minor, band.band


def offer_packages(
    config: DecisionConfig,
    propensities: Mapping[str, float],
    age: FieldValue,
    limit_minor: int,
) -> tuple[PackageOffer, ...]:
    """The configured packages the applicant is eligible for, by propensity, best first.

    A package is offered when it is enabled, the model has it as a class, the applicant's age
    is known and at least its ``min_age`` (if set) and the limit at least its
    ``min_limit_minor`` (if set). Ties keep configuration order.

    Parameters
    ----------
    config : DecisionConfig
    propensities : mapping of str to float
        The model's propensity per package class.
    age : float or None
        The applicant's age (``application.age_field``), None when missing or not configured.
    limit_minor : int
        The initial credit limit.
    """
    eligible = [
        (package.name, propensities[package.name])
        for package in config.packages
        if package.enabled
        and package.name in propensities
        and (package.min_age is None or (isinstance(age, float) and age >= package.min_age))
        and (package.min_limit_minor is None or limit_minor >= package.min_limit_minor)
    ]
    ranked = sorted(eligible, key=lambda item: -item[1])
    return tuple(
        PackageOffer(package=name, propensity=propensity, rank=rank)
        for rank, (name, propensity) in enumerate(ranked, start=1)
    )


def instalment_offer(config: DecisionConfig, propensity: float) -> InstalmentOffer | None:
    """The rule table's offer and channel for an instalment propensity; None without a table."""
    if config.instalment is None:
        return None
    band = config.instalment.band_for(propensity)
    return InstalmentOffer(propensity=propensity, offer=band.offer, channel=band.channel)
