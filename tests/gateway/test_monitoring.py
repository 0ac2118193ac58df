"""gateway.monitoring: PSI per variable against a hand-made baseline, and the decision rates."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math

import pytest

from bank_node.monitoring_baseline import (
    OTHER_OR_MISSING,
    CategoryBins,
    MonitoringBaseline,
    NumericBins,
)
from cobrand.errors import InvalidRequest
from cobrand.metrics import PSI_SHARE_FLOOR, PsiVerdict
from gateway.application import FieldValue
from gateway.audit_record import AuditRecord, PartnerSliceStatus
from gateway.config import Decision
from gateway.monitoring import (
    VariableKind,
    decision_rates,
    latest_version,
    stability_report,
)
from tests.gateway.audit_records import T0, make_record

HOUR = dt.timedelta(hours=1)

# Risk: < 0.1, [0.1, 0.2), >= 0.2, missing. Income: < 1000, >= 1000, missing.
BASELINE = MonitoringBaseline(
    rows=1000,
    scores={"risk": NumericBins(edges=(0.1, 0.2), shares=(0.3, 0.4, 0.3, 0.0))},
    numeric={"income": NumericBins(edges=(1000.0,), shares=(0.5, 0.5, 0.0))},
    categorical={
        "education": CategoryBins(categories=("school", "university"), shares=(0.2, 0.4, 0.4))
    },
)


def _record(
    income: FieldValue, education: FieldValue, probability: float, i: int = 0
) -> AuditRecord:
    return make_record(
        f"APP-{i}",
        decided_at=T0 + i * T0.resolution,
        fields={"income": income, "education": education},
        probability=probability,
    )


def _like_training() -> list[AuditRecord]:
    """Ten decisions whose every variable has exactly the baseline's shares."""
    probabilities = [0.05] * 3 + [0.15] * 4 + [0.3] * 3
    incomes = [500.0] * 5 + [2000.0] * 5
    educations: list[FieldValue] = [None, "phd", *["school"] * 4, *["university"] * 4]
    return [
        _record(income, education, p, i)
        for i, (income, education, p) in enumerate(
            zip(incomes, educations, probabilities, strict=True)
        )
    ]


def _report(records: list[AuditRecord]) -> dict[str, tuple[float, PsiVerdict]]:
    report = stability_report(records, BASELINE, model_version="v1", since=T0, until=T0 + HOUR)
    return {v.name: (v.psi, v.band) for v in report.variables}


def test_decisions_distributed_like_the_baseline_have_zero_psi_everywhere() -> None:
    report = stability_report(
        _like_training(), BASELINE, model_version="v1", since=T0, until=T0 + HOUR
    )
    assert [(v.name, v.kind) for v in report.variables] == [
        ("risk", VariableKind.SCORE),
        ("income", VariableKind.NUMERIC),
        ("education", VariableKind.CATEGORICAL),
    ]
    for variable in report.variables:
        assert variable.actual == pytest.approx(variable.expected)
        assert variable.psi == pytest.approx(0.0, abs=1e-12)
        assert variable.band is PsiVerdict.STABLE
    assert report.variables[0].bins == ("< 0.1", "[0.1, 0.2)", ">= 0.2", "missing")
    assert report.variables[2].bins == (OTHER_OR_MISSING, "school", "university")


def test_a_moved_feature_gives_the_textbook_psi_with_empty_bins_floored() -> None:
    records = [
        dataclasses.replace(r, bank_features={**r.bank_features, "income": 200.0})
        for r in _like_training()
    ]
    # Income shares 0.5 / 0.5 / 0 become 1 / 0 / 0: the emptied bin is floored at 1e-4 and the
    # missing bin, empty on both sides, adds nothing.
    by_hand = (1.0 - 0.5) * math.log(1.0 / 0.5) + (PSI_SHARE_FLOOR - 0.5) * math.log(
        PSI_SHARE_FLOOR / 0.5
    )
    psi = _report(records)
    assert psi["income"][0] == pytest.approx(by_hand)
    assert psi["income"][1] is PsiVerdict.SHIFT
    for unmoved in ("risk", "education"):
        assert psi[unmoved][0] == pytest.approx(0.0, abs=1e-12)
        assert psi[unmoved][1] is PsiVerdict.STABLE


@pytest.mark.parametrize(
    ("low_risk", "band"),
    [(3, PsiVerdict.STABLE), (5, PsiVerdict.WATCH), (7, PsiVerdict.SHIFT)],
)
def test_the_score_band_follows_its_psi(low_risk: int, band: PsiVerdict) -> None:
    # Of ten decisions, `low_risk` below 0.1, the rest split between the other two bins.
    rest = 10 - low_risk
    probabilities = [0.05] * low_risk + [0.15] * (rest - rest // 2) + [0.3] * (rest // 2)
    records = [_record(500.0, "school", p, i) for i, p in enumerate(probabilities)]
    actual = [low_risk / 10, (rest - rest // 2) / 10, (rest // 2) / 10]
    by_hand = sum(
        (a - e) * math.log(max(a, PSI_SHARE_FLOOR) / e)
        for e, a in zip((0.3, 0.4, 0.3), actual, strict=True)
    )
    psi, verdict = _report(records)["risk"]
    assert psi == pytest.approx(by_hand)
    assert verdict is band


def test_missing_values_count_in_their_own_bins() -> None:
    records = [_record(None, None, 0.05, i) for i in range(4)]
    report = stability_report(records, BASELINE, model_version="v1", since=T0, until=T0 + HOUR)
    income, education = report.variables[1], report.variables[2]
    assert income.actual == (0.0, 0.0, 1.0)
    assert education.actual == (1.0, 0.0, 0.0)


def test_rates_count_outcomes_and_fallbacks_by_status() -> None:
    used = make_record("APP-1")
    timeout = make_record("APP-2", embedding=None)
    no_consent = dataclasses.replace(
        make_record("APP-3", embedding=None), partner_status=PartnerSliceStatus.NO_CONSENT
    )
    refer = dataclasses.replace(
        used, result=dataclasses.replace(used.result, decision=Decision.REFER)
    )
    decline = dataclasses.replace(
        timeout, result=dataclasses.replace(timeout.result, decision=Decision.DECLINE)
    )
    rates = decision_rates([used, timeout, no_consent, refer, decline])
    assert (rates.decisions, rates.approve, rates.refer, rates.decline) == (5, 0.6, 0.2, 0.2)
    assert rates.partner_fallback == pytest.approx(0.6)
    assert rates.fallback_by_status == {
        "no_consent": 0.2,
        "unknown_applicant": 0.0,
        "timeout": 0.4,
        "unavailable": 0.0,
    }


def test_the_latest_version_is_the_one_of_the_most_recent_decision() -> None:
    older = make_record("APP-1", decided_at=T0 + HOUR, model_version="v2")
    newer = make_record("APP-2", decided_at=T0 + 2 * HOUR, model_version="v1")
    assert latest_version([newer, older]) == "v1"
    with pytest.raises(InvalidRequest, match="no decisions"):
        latest_version([])


def test_the_report_is_plain_json() -> None:
    report = stability_report(
        _like_training(), BASELINE, model_version="v1", since=T0, until=T0 + HOUR
    )
    body = json.loads(json.dumps(report.to_json()))
    assert body["model_version"] == "v1"
    assert body["since"] == "2026-11-23T09:00:00+00:00"
    assert body["rates"]["decisions"] == 10
    assert [v["band"] for v in body["variables"]] == ["stable"] * 3
    assert body["variables"][1]["expected"] == [0.5, 0.5, 0.0]


def test_decisions_of_another_version_or_mistyped_features_are_refused_by_name() -> None:
    other = make_record("APP-9", model_version="v2")
    with pytest.raises(InvalidRequest, match=f"decision {other.request_id} is of model version v2"):
        stability_report([other], BASELINE, model_version="v1", since=T0, until=T0 + HOUR)
    wrong = _record("lots", "school", 0.1)
    with pytest.raises(InvalidRequest, match="bank feature 'income' is the category 'lots'"):
        stability_report([wrong], BASELINE, model_version="v1", since=T0, until=T0 + HOUR)
    with pytest.raises(InvalidRequest, match="no decisions of model version v1"):
        stability_report([], BASELINE, model_version="v1", since=T0, until=T0 + HOUR)
