"""RFC 9497's OPRF(ristretto255, SHA-512) in base mode: the consented lookup's primitives.

The gateway blinds an applicant's OPRF input x with a fresh scalar r (`blind`: B = r * H(x)),
the partner multiplies the blinded element by its long-term key k (`blind_evaluate`), the
gateway removes r and hashes (`finalize`): F_k(x) = Hash(x, k * H(x)), what the partner
computes for its own users with `evaluate`. The partner sees only B, a uniformly random
element; the gateway cannot compute F_k without the partner. These four functions are RFC
9497 section 3.3.1's Blind, BlindEvaluate, Finalize and Evaluate with modeOPRF (0x00) and the
suite "ristretto255-SHA512" exactly (`CONTEXT_STRING`), checked against the RFC's test
vectors, so any conforming implementation can play either side. libsodium (through pysodium)
supplies ristretto255; RFC 9380's ``expand_message_xmd`` is ``cobrand.psi``'s.

- HashToGroup is hash_to_ristretto255: 64 bytes of ``expand_message_xmd`` (SHA-512, DST
  "HashToGroup-" || contextString) through ristretto255's one-way map
  (``crypto_core_ristretto255_from_hash``).
- Every element received is checked (`check_element`): ristretto255's Decode refuses a
  non-canonical encoding, and the identity is refused as the RFC's DeserializeElement
  requires. ristretto255 is a prime-order group, so there is no small-order component to
  leak k.
- The RFC fixes contextString per suite, so the separation of co-brand deals is in the input
  (`lookup_domain` then `lookup_input`): one length-prefixed encoding of the protocol's tag and
  version, the federation id, the federation file's digest, the identifier kind and the
  canonical identifier. Outputs of one co-brand deal match nothing in another, and one string
  read as two kinds is two inputs.
- The partner indexes users by `lookup_output`, the first 16 bytes of the RFC's 64: they index
  a table of at most billions of partner users, where a collision among 2^30 outputs has
  probability about 2^-69, and only the key holder can compute them, so a longer output buys
  no security while multiplying the partner's index.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Final

# pysodium (ctypes over the system's libsodium) ships no type hints: its results are made
# `bytes` or `bool` in the wrappers below and nowhere else.
import pysodium  # type: ignore[import-untyped]

from cobrand.errors import ConfigError, InvalidPoint, InvalidRequest
from cobrand.psi import expand_message_xmd

if TYPE_CHECKING:
    from cobrand.federation import Federation

__all__ = [
    "CONTEXT_STRING",
    "ELEMENT_BYTES",
    "HASH_BYTES",
    "OUTPUT_BYTES",
    "PROTOCOL_VERSION",
    "SCALAR_BYTES",
    "blind",
    "blind_evaluate",
    "check_element",
    "check_key",
    "evaluate",
    "evaluate_lookup",
    "finalize",
    "hash_to_group",
    "lookup_domain",
    "lookup_input",
    "lookup_output",
    "new_scalar",
]

PROTOCOL_VERSION: Final = 2
"""The version in `lookup_domain`'s tag: 2 is RFC 9497's suite (1 was an edwards25519 one)."""
CONTEXT_STRING: Final = b"OPRFV1-\x00-ristretto255-SHA512"
"""RFC 9497's contextString: "OPRFV1-" || I2OSP(modeOPRF, 1) || "-" || the suite's id."""
ELEMENT_BYTES: Final = 32
SCALAR_BYTES: Final = 32
HASH_BYTES: Final = 64
"""The RFC's output length (Nh, SHA-512's)."""
OUTPUT_BYTES: Final = 16
"""The length of a `lookup_output`, what the gateway sends and the partner indexes."""

_HASH_TO_GROUP_DST: Final = b"HashToGroup-" + CONTEXT_STRING
_MAX_INPUT_BYTES: Final = 2**16 - 1  # the RFC's inputs are length-prefixed with two bytes
_IDENTITY: Final = bytes(ELEMENT_BYTES)  # ristretto255's only encoding of the identity
_LOOKUP_TAG: Final = b"cobrand-consented-lookup-v%d" % PROTOCOL_VERSION


def _from_hash(uniform: bytes) -> bytes:
    return bytes(pysodium.crypto_core_ristretto255_from_hash(uniform))


def _scalarmult(scalar: bytes, element: bytes) -> bytes:
    return bytes(pysodium.crypto_scalarmult_ristretto255(scalar, element))


def _invert(scalar: bytes) -> bytes:
    return bytes(pysodium.crypto_core_ristretto255_scalar_invert(scalar))


def _reduce(wide: bytes) -> bytes:
    return bytes(pysodium.crypto_core_ristretto255_scalar_reduce(wide))


def _random_scalar() -> bytes:
    return bytes(pysodium.crypto_core_ristretto255_scalar_random())


def _decodes(element: bytes) -> bool:
    return bool(pysodium.crypto_core_ristretto255_is_valid_point(element))


def _prefixed(part: bytes, what: str) -> bytes:
    """I2OSP(len(part), 2) || part."""
    if len(part) > _MAX_INPUT_BYTES:
        raise InvalidRequest(f"{what} is {len(part)} bytes, at most {_MAX_INPUT_BYTES}")
    return len(part).to_bytes(2, "big") + part


def lookup_domain(federation: Federation) -> bytes:
    """The first fields of every OPRF input of one federation's consented lookups.

    The protocol's tag and version, the federation id and the federation file's SHA-256, each
    length-prefixed. A lookup's OPRF input is ``lookup_domain(federation) + lookup_input(kind,
    canonical_id)``: five length-prefixed fields, so no two tuples give one input.
    """
    return b"".join(
        _prefixed(part, what)
        for part, what in (
            (_LOOKUP_TAG, "the tag"),
            (federation.federation_id.encode(), "the federation id"),
            (federation.digest(), "the federation digest"),
        )
    )


def lookup_input(kind: str, canonical_id: str) -> bytes:
    """The last fields of the OPRF input of a canonical identifier of identifier kind `kind`.

    The kind is part of it, so one string read as two kinds is two inputs.

    Raises
    ------
    InvalidRequest
        The kind or the identifier is over 65535 bytes in UTF-8.
    """
    return _prefixed(kind.encode(), "an identifier kind") + _prefixed(
        canonical_id.encode(), "a canonical identifier"
    )


def lookup_output(output: bytes) -> bytes:
    """The lookup output of a `finalize` or `evaluate` output: its first `OUTPUT_BYTES`."""
    return output[:OUTPUT_BYTES]


def hash_to_group(x: bytes) -> bytes:
    """RFC 9497's HashToGroup for ristretto255: hash_to_ristretto255 (RFC 9380) of `x`."""
    return _from_hash(expand_message_xmd(x, _HASH_TO_GROUP_DST, HASH_BYTES))


def new_scalar() -> bytes:
    """A uniformly random non-zero scalar: a blind, or a new OPRF key."""
    while True:
        scalar = _random_scalar()
        if any(scalar):
            return scalar


def check_element(element: bytes, field: str) -> None:
    """RFC 9497's DeserializeElement for ristretto255, as a check: refuse anything but the
    canonical encoding of an element other than the identity.

    Raises
    ------
    InvalidPoint
        Naming `field`: the wrong length, no canonical ristretto255 encoding, or the identity.
    """
    if len(element) != ELEMENT_BYTES:
        raise InvalidPoint(f"{field} must be {ELEMENT_BYTES} bytes, it is {len(element)}")
    if not _decodes(element):
        raise InvalidPoint(f"{field} is not the canonical encoding of a ristretto255 element")
    if element == _IDENTITY:
        raise InvalidPoint(f"{field} is the identity element")


def check_key(key: bytes) -> None:
    """Refuse an OPRF key that is not a canonical non-zero scalar.

    Raises
    ------
    ConfigError
        The wrong length, zero, or not reduced modulo the group order.
    """
    if len(key) != SCALAR_BYTES:
        raise ConfigError(f"an OPRF key is {SCALAR_BYTES} bytes, this one is {len(key)}")
    if _reduce(key + bytes(SCALAR_BYTES)) != key or not any(key):
        raise ConfigError("an OPRF key must be a non-zero scalar below the group order")


def _input_element(x: bytes) -> bytes:
    _prefixed(x, "an OPRF input")
    element = hash_to_group(x)
    if element == _IDENTITY:
        # The RFC's InvalidInputError: found only by inverting SHA-512.
        raise InvalidRequest("this OPRF input hashes to the identity element")
    return element


def _hash_output(x: bytes, element: bytes) -> bytes:
    return hashlib.sha512(
        _prefixed(x, "an OPRF input") + _prefixed(element, "an element") + b"Finalize"
    ).digest()


def blind(x: bytes) -> tuple[bytes, bytes]:
    """RFC 9497's Blind: a fresh blind r and the blinded element r * H(x).

    Returns
    -------
    tuple of bytes
        ``(r, blinded)``; r stays with the caller for `finalize`.

    Raises
    ------
    InvalidRequest
        `x` is over 65535 bytes.
    """
    r = new_scalar()
    return r, _scalarmult(r, _input_element(x))


def blind_evaluate(key: bytes, blinded: bytes, field: str = "blinded_element") -> bytes:
    """RFC 9497's BlindEvaluate, once B is deserialized: k * B.

    Raises
    ------
    InvalidPoint
        `blinded` is no element of the group other than the identity (named `field`).
    """
    check_element(blinded, field)
    return _scalarmult(key, blinded)


def finalize(x: bytes, r: bytes, evaluated: bytes, field: str = "evaluated_element") -> bytes:
    """RFC 9497's Finalize, once Z is deserialized: Hash(x, r^-1 * Z), 64 bytes.

    Raises
    ------
    InvalidPoint
        `evaluated` is no element of the group other than the identity (named `field`).
    """
    check_element(evaluated, field)
    return _hash_output(x, _scalarmult(_invert(r), evaluated))


def evaluate(key: bytes, x: bytes) -> bytes:
    """RFC 9497's Evaluate, F_k(x) by the key holder: what blind, blind_evaluate and finalize
    give the client."""
    return _hash_output(x, _scalarmult(key, _input_element(x)))


def evaluate_lookup(key: bytes, domain: bytes, kind: str, canonical_id: str) -> bytes:
    """The lookup output the key holder computes for one of its users: the first
    `OUTPUT_BYTES` of `evaluate` of ``domain + lookup_input(kind, canonical_id)``."""
    return lookup_output(evaluate(key, domain + lookup_input(kind, canonical_id)))
