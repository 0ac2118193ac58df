"""Mobile numbers written the way real systems hold them: prefixed, spaced, dashed, or not.

Each party stores numbers in its own mix of styles, and the same person is always written in a
different style at the two parties, so matching only works after canonicalization. A few partner
rows hold numbers no canonicalizer can read (truncated, mistyped, placeholders).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "BANK_STYLE_SHARES",
    "PARTNER_STYLE_SHARES",
    "STYLES",
    "corrupt_mobiles",
    "draw_styles",
    "format_mobiles",
]

STYLES: Final = (
    ("", ""),  # 13812345678
    ("", " "),  # 138 1234 5678
    ("", "-"),  # 138-1234-5678
    ("+86 ", " "),  # +86 138 1234 5678
    ("+86", ""),  # +8613812345678
    ("0086 ", ""),  # 0086 13812345678
    ("86", ""),  # 8613812345678
    ("(+86) ", "-"),  # (+86) 138-1234-5678
    ("", "."),  # 138.1234.5678
    ("+86-", "-"),  # +86-138-1234-5678
)
"""(prefix, separator) pairs: a number reads prefix + 3 digits + sep + 4 digits + sep + 4 digits."""

# A core banking system mostly holds bare or E.164 numbers; an e-commerce sign-up form takes
# whatever people type.
BANK_STYLE_SHARES: Final = np.array([0.40, 0.10, 0.05, 0.10, 0.25, 0.04, 0.03, 0.01, 0.01, 0.01])
PARTNER_STYLE_SHARES: Final = np.array([0.22, 0.16, 0.14, 0.10, 0.08, 0.06, 0.07, 0.06, 0.05, 0.06])

_PLACEHOLDERS: Final = ("unknown", "n/a", "000", "-", "tbd")


def draw_styles(
    rng: np.random.Generator, shares: npt.NDArray[np.float64], size: int
) -> npt.NDArray[np.int64]:
    """Draw a style index per number from `shares` (one share per entry of `STYLES`)."""
    return rng.choice(len(STYLES), size=size, p=shares).astype(np.int64)


def format_mobiles(numbers: npt.NDArray[np.int64], styles: npt.NDArray[np.int64]) -> pa.StringArray:
    """Write each 11-digit number in its style.

    Parameters
    ----------
    numbers : ndarray of int64, shape (n,)
        11-digit mobile numbers.
    styles : ndarray of int64, shape (n,)
        Index into `STYLES` per number.

    Returns
    -------
    pyarrow.StringArray, length n
    """
    digits = pc.cast(pa.array(numbers, type=pa.int64()), pa.string())
    index = pa.array(styles, type=pa.int64())
    prefix = pc.take(pa.array([p for p, _ in STYLES]), index)
    separator = pc.take(pa.array([s for _, s in STYLES]), index)
    joined: pa.StringArray = pc.binary_join_element_wise(
        prefix,
        pc.utf8_slice_codeunits(digits, 0, 3),
        separator,
        pc.utf8_slice_codeunits(digits, 3, 7),
        separator,
        pc.utf8_slice_codeunits(digits, 7, 11),
        "",
    )
    return joined


def corrupt_mobiles(rng: np.random.Generator, numbers: npt.NDArray[np.int64]) -> pa.StringArray:
    """Damage each number so that no canonicalizer can read it.

    One of four faults per number: a digit lost, a wrong leading digit, a letter typed for a
    digit, or a placeholder where the number should be.

    Parameters
    ----------
    rng : numpy.random.Generator
    numbers : ndarray of int64, shape (n,)
        11-digit mobile numbers.

    Returns
    -------
    pyarrow.StringArray, length n
    """
    digits = pc.cast(pa.array(numbers, type=pa.int64()), pa.string())
    faults = [
        pc.utf8_slice_codeunits(digits, 0, 10),
        pc.binary_join_element_wise("2", pc.utf8_slice_codeunits(digits, 1, 11), ""),
        pc.binary_join_element_wise(
            pc.utf8_slice_codeunits(digits, 0, 7), "O", pc.utf8_slice_codeunits(digits, 8, 11), ""
        ),
        pc.take(
            pa.array(_PLACEHOLDERS), pa.array(rng.integers(0, len(_PLACEHOLDERS), numbers.size))
        ),
    ]
    chosen: pa.StringArray = pc.choose(
        pa.array(rng.integers(0, len(faults), numbers.size)), *faults
    )
    return chosen
