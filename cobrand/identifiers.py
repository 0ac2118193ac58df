"""Identifier kinds used for matching customers, and their canonical forms.

Both parties must turn the same person into the same bytes before private set intersection, so
every kind lives in ONE registry here, `IDENTIFIER_KINDS`, keyed by kind name. Each kind names its
canonical form (the federation file repeats it, and its digest enters the PSI domain separator)
and carries a vectorised `canonicalize` that never guesses: a value it cannot read is flagged in
the returned mask, never mapped to something else.

=================  ===============  ==================================================
kind               canonical form   accepted input
=================  ===============  ==================================================
mobile_cn          e164-cn-mobile   11 digits starting with 1, optional +86/0086/86
                                    prefix; spaces, dashes, dots, parentheses ignored
national_id_cn     gb11643-upper    17 digits + check digit (0-9 or x/X), spaces and
                                    dashes ignored, ISO 7064 MOD 11-2 check verified
customer_number    decimal          ASCII digits with surrounding spaces; leading
                                    zeros dropped
email              lower-trimmed    one @ with non-empty local part and domain
=================  ===============  ==================================================

The work is done by Arrow compute kernels (RE2 regular expressions, whose ``\\d`` and ``\\s`` are
ASCII-only, so look-alike Unicode digits are invalid rather than silently accepted) and one
numpy pass for the national-id checksum; a million values take well under a second.

One value at a time (the gateway's request), `IdentifierKind.canonicalize_one` applies the same
rules, the same regular expressions read by Python's `re` (`_python_regex`), to ASCII text
without Arrow; other text, rare in an identifier, goes through `canonicalize` itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "IDENTIFIER_KINDS",
    "Canonicalized",
    "IdentifierKind",
    "canonicalize_customer_number",
    "canonicalize_email",
    "canonicalize_mobile_cn",
    "canonicalize_national_id_cn",
    "gb11643_check_character",
]

IdentifierValues: TypeAlias = Sequence[str | None] | npt.NDArray[Any] | pa.Array | pa.ChunkedArray
"""What `canonicalize` accepts: strings, with None (or an Arrow null) for a missing value."""


class Canonicalized(NamedTuple):
    """The result of canonicalizing a column of identifiers.

    Attributes
    ----------
    values : numpy.ndarray of object, shape (n,)
        Canonical strings; None where `invalid` is True.
    invalid : numpy.ndarray of bool, shape (n,)
        True for a value that is missing or cannot be read as this kind.
    """

    values: npt.NDArray[np.object_]
    invalid: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class IdentifierKind:
    """One kind of identifier usable for matching.

    Attributes
    ----------
    name : str
        Registry key, as written in federation and schema files (``mobile_cn``).
    canonical_form : str
        Name of the canonical form (``e164-cn-mobile``); a federation file must repeat it, so a
        change of normalization is a visible change of the federation.
    canonicalize : callable
        Vectorised ``values -> Canonicalized``.
    canonicalize_ascii : callable
        The same rules for one ASCII string: ``value -> canonical string``, None when invalid.
    """

    name: str
    canonical_form: str
    canonicalize: Callable[[IdentifierValues], Canonicalized]
    canonicalize_ascii: Callable[[str], str | None]

    def canonicalize_one(self, value: str) -> str | None:
        """`canonicalize` of one value: its canonical form, or None where it is flagged invalid.

        Raises
        ------
        TypeError, pyarrow.ArrowException
            What `canonicalize` raises for ``[value]``: ASCII text is canonicalized without
            Arrow, anything else by `canonicalize` itself.
        """
        if isinstance(value, str) and value.isascii():
            return self.canonicalize_ascii(value)
        result = self.canonicalize([value])
        return None if result.invalid[0] else str(result.values[0])


def _as_arrow_strings(values: IdentifierValues) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            raise TypeError(f"identifiers must be strings, got Arrow type {values.type}")
        return values
    # from_pandas: a float NaN in an object column is a missing value, as None is.
    return pa.array(values, type=pa.string(), from_pandas=True)


def _finish(canonical: pa.Array, valid: pa.Array) -> Canonicalized:
    """Null out invalid entries and convert to numpy; a null in `valid` counts as invalid."""
    valid_np = pc.fill_null(valid, False).to_numpy(zero_copy_only=False).astype(bool)
    values = pc.if_else(valid_np, canonical, pa.scalar(None, pa.string()))
    return Canonicalized(values.to_numpy(zero_copy_only=False).astype(object), ~valid_np)


def _python_regex(re2: str) -> re.Pattern[str]:
    """An RE2 expression of this module as Python's `re` reads it alike on ASCII text.

    RE2's ``\\s`` is ``[\\t\\n\\f\\r ]`` (Python's adds ``\\v``) and is only used inside a
    character class here; RE2's ``$`` is the end of text (Python's also matches before a final
    newline); ``\\d`` is ASCII in both (`re.ASCII`).
    """
    return re.compile(re2.replace(r"\s", "\t\n\f\r ").replace("$", r"\Z"), re.ASCII)


_MOBILE_CN = r"^(?:\+86|0086|86)?(1\d{10})$"
_MOBILE_SEPARATORS = r"[\s\-.()]"
_NATIONAL_ID_SEPARATORS = r"[\s\-]"
_NATIONAL_ID = r"^\d{17}[\dX]$"
_DECIMAL = r"^\d+$"
_EMAIL = r"^[^@\s]+@[^@\s]+$"
_PYTHON = {
    re2: _python_regex(re2)
    for re2 in (
        _MOBILE_CN,
        _MOBILE_SEPARATORS,
        _NATIONAL_ID_SEPARATORS,
        _NATIONAL_ID,
        _DECIMAL,
        _EMAIL,
    )
}


def canonicalize_mobile_cn(values: IdentifierValues) -> Canonicalized:
    """Canonicalize Chinese mobile numbers to ``+86`` followed by 11 digits.

    Parameters
    ----------
    values : sequence of str or None, shape (n,)
        Raw numbers such as ``"+86 138-1234-5678"``, ``"0086 (138) 1234 5678"``,
        ``"8613812345678"`` or ``"138.1234.5678"``.

    Returns
    -------
    Canonicalized
        ``"+8613812345678"`` for each of the examples above.
    """
    compact = pc.replace_substring_regex(
        _as_arrow_strings(values), pattern=_MOBILE_SEPARATORS, replacement=""
    )
    canonical = pc.replace_substring_regex(compact, pattern=_MOBILE_CN, replacement=r"+86\1")
    return _finish(canonical, pc.match_substring_regex(compact, _MOBILE_CN))


def _mobile_cn_ascii(value: str) -> str | None:
    compact = _PYTHON[_MOBILE_SEPARATORS].sub("", value)
    match = _PYTHON[_MOBILE_CN].match(compact)
    return None if match is None else "+86" + match[1]


# ISO 7064 MOD 11-2 as GB 11643 applies it: weight of position i (0-based, 17 digits) is
# 2**(17 - i) mod 11, and the remainder of the weighted sum picks the check character.
_GB11643_WEIGHTS = np.array([pow(2, 17 - i, 11) for i in range(17)], dtype=np.int64)
_GB11643_CHECK = np.frombuffer(b"10X98765432", dtype=np.uint8)
_NATIONAL_ID_LENGTH = 18


def gb11643_check_character(first17: str) -> str:
    """Return the GB 11643 check character (``0``-``9`` or ``X``) for 17 leading digits.

    Parameters
    ----------
    first17 : str
        The first 17 digits of a citizen identity number.
    """
    digits = np.frombuffer(first17.encode("ascii"), dtype=np.uint8).astype(np.int64) - ord("0")
    return chr(_GB11643_CHECK[int(digits @ _GB11643_WEIGHTS) % 11])


def canonicalize_national_id_cn(values: IdentifierValues) -> Canonicalized:
    """Canonicalize Chinese citizen identity numbers (GB 11643) to 18 upper-case characters.

    Parameters
    ----------
    values : sequence of str or None, shape (n,)
        Raw numbers such as ``"11010519491231002x"`` or ``"110105 19491231 002X"``.

    Returns
    -------
    Canonicalized
        ``"11010519491231002X"`` for both examples; a number whose check character does not
        match its first 17 digits is invalid.
    """
    compact = pc.utf8_upper(
        pc.replace_substring_regex(
            _as_arrow_strings(values), pattern=_NATIONAL_ID_SEPARATORS, replacement=""
        )
    )
    well_formed = pc.fill_null(pc.match_substring_regex(compact, _NATIONAL_ID), False)
    # Rows that are not well formed get a placeholder so the checksum runs on one dense block.
    filler = pa.scalar("0" * _NATIONAL_ID_LENGTH, pa.string())
    fixed = pc.cast(pc.if_else(well_formed, compact, filler), pa.binary(_NATIONAL_ID_LENGTH))
    chars = np.frombuffer(
        fixed.buffers()[1],
        dtype=np.uint8,
        count=len(fixed) * _NATIONAL_ID_LENGTH,
        offset=fixed.offset * _NATIONAL_ID_LENGTH,
    ).reshape(len(fixed), _NATIONAL_ID_LENGTH)
    digits = chars[:, :17].astype(np.int64) - ord("0")
    expected = _GB11643_CHECK[(digits @ _GB11643_WEIGHTS) % 11]
    valid = well_formed.to_numpy(zero_copy_only=False).astype(bool) & (expected == chars[:, 17])
    return _finish(compact, pa.array(valid))


def _national_id_cn_ascii(value: str) -> str | None:
    compact = _PYTHON[_NATIONAL_ID_SEPARATORS].sub("", value).upper()
    if _PYTHON[_NATIONAL_ID].match(compact) is None:
        return None
    return compact if gb11643_check_character(compact[:17]) == compact[17] else None


def canonicalize_customer_number(values: IdentifierValues) -> Canonicalized:
    """Canonicalize decimal customer numbers: surrounding spaces and leading zeros dropped.

    Parameters
    ----------
    values : sequence of str or None, shape (n,)
        Raw numbers such as ``" 000123 "``; anything but ASCII digits inside is invalid.

    Returns
    -------
    Canonicalized
        ``"123"`` for the example; an all-zero number becomes ``"0"``.
    """
    trimmed = pc.utf8_trim_whitespace(_as_arrow_strings(values))
    stripped = pc.utf8_ltrim(trimmed, characters="0")
    canonical = pc.if_else(pc.equal(stripped, ""), pa.scalar("0"), stripped)
    return _finish(canonical, pc.match_substring_regex(trimmed, _DECIMAL))


def _customer_number_ascii(value: str) -> str | None:
    # On ASCII, str.strip trims exactly what utf8_trim_whitespace does.
    trimmed = value.strip()
    if _PYTHON[_DECIMAL].match(trimmed) is None:
        return None
    return trimmed.lstrip("0") or "0"


def canonicalize_email(values: IdentifierValues) -> Canonicalized:
    """Canonicalize e-mail addresses: trimmed and lower-cased.

    Parameters
    ----------
    values : sequence of str or None, shape (n,)
        Raw addresses; exactly one ``@`` with a non-empty part on each side and no inner
        whitespace is required.

    Returns
    -------
    Canonicalized
        ``"ann@example.cn"`` for ``" Ann@Example.CN "``.
    """
    canonical = pc.utf8_lower(pc.utf8_trim_whitespace(_as_arrow_strings(values)))
    return _finish(canonical, pc.match_substring_regex(canonical, _EMAIL))


def _email_ascii(value: str) -> str | None:
    canonical = value.strip().lower()
    return canonical if _PYTHON[_EMAIL].match(canonical) is not None else None


IDENTIFIER_KINDS: MappingProxyType[str, IdentifierKind] = MappingProxyType(
    {
        kind.name: kind
        for kind in (
            IdentifierKind("mobile_cn", "e164-cn-mobile", canonicalize_mobile_cn, _mobile_cn_ascii),
            IdentifierKind(
                "national_id_cn",
                "gb11643-upper",
                canonicalize_national_id_cn,
                _national_id_cn_ascii,
            ),
            IdentifierKind(
                "customer_number", "decimal", canonicalize_customer_number, _customer_number_ascii
            ),
            IdentifierKind("email", "lower-trimmed", canonicalize_email, _email_ascii),
        )
    }
)
"""The one registry of identifier kinds, keyed by kind name."""
