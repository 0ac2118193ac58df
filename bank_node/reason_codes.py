"""A model version's reason codes: one per bank feature against its reference value, and the
partner's contribution as one code.

Codes are stable within a version: ``B01``, ``B02``... in the preprocessor's feature order
(numeric features, then categorical, each in schema order), then ``P01``. A bank feature's
reference is its typical training value (the median of a numeric feature's encoding, the most
common category), which the gateway's attribution sets the feature to; the partner's code names
no partner feature (the score with the partner slice against the head's bank-only path).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
import pydantic
from pydantic import ConfigDict

from bank_node.serving_reference import FeatureReference, category_reference, numeric_reference
from cobrand.preprocess import FIRST_KNOWN_INDEX, MISSING_INDEX, UNSEEN_INDEX, Preprocessor

__all__ = ["PARTNER_REASON", "PartnerReason", "ReasonCodes", "fit_reason_codes"]


class _Frozen(pydantic.BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PartnerReason(_Frozen):
    """The partner's contribution as one reason: the score with the partner slice against
    the score without it (the head's bank-only path). Names no partner feature."""

    code: str = "P01"
    text: str = "The customer's relationship with the co-brand partner lowered the score"


PARTNER_REASON: Final = PartnerReason()


class ReasonCodes(_Frozen):
    """A version's reason codes: one per bank feature, then the partner's."""

    bank: tuple[FeatureReference, ...]
    partner: PartnerReason


def fit_reason_codes(
    preprocessor: Preprocessor,
    numeric: npt.NDArray[np.float32],
    categorical: npt.NDArray[np.int64],
) -> ReasonCodes:
    """The reason codes of `preprocessor`'s features, referenced on encoded training rows.

    Parameters
    ----------
    preprocessor : Preprocessor
    numeric, categorical : ndarray
        The training rows' encoded numeric and categorical features (`Preprocessor.transform`).
    """
    indicator = len(preprocessor.numeric)
    references: list[FeatureReference] = []
    for j, state in enumerate(preprocessor.numeric):
        median = numeric_reference(numeric[:, j])
        inputs = [(j, median)]
        if state.missing_indicator:
            inputs.append((indicator, 0.0))
            indicator += 1
        references.append(
            FeatureReference(
                code=f"B{len(references) + 1:02d}",
                feature=state.name,
                kind="numeric",
                text=f"{state.name} of {{value}} lowered the score",
                reference=f"{median * state.scale + state.median:.6g}",
                numeric=tuple(inputs),
            )
        )
    for j, category in enumerate(preprocessor.categorical):
        index = category_reference(categorical[:, j])
        references.append(
            FeatureReference(
                code=f"B{len(references) + 1:02d}",
                feature=category.name,
                kind="categorical",
                text=f"{category.name} '{{value}}' lowered the score",
                reference=_category_name(category.vocabulary, index),
                categorical=((j, index),),
            )
        )
    return ReasonCodes(bank=tuple(references), partner=PARTNER_REASON)


def _category_name(vocabulary: tuple[str, ...], index: int) -> str:
    if index == MISSING_INDEX:
        return "missing"
    if index == UNSEEN_INDEX:
        return "other"
    return vocabulary[index - FIRST_KNOWN_INDEX]
