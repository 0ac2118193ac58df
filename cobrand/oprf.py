"""Oblivious PRF over edwards25519's prime-order subgroup: the consented lookup's primitives.

RFC 9497 base mode, with libsodium's edwards25519 group operations (PyNaCl exposes no
ristretto255). The gateway blinds an applicant's identifier x with a fresh scalar r (`blind`),
the partner multiplies the blinded element by its long-term key k (`evaluate`), the gateway
removes r and hashes (`unblind`, `finalize`): y = F_k(x) = Hash(context, x, k * H(x)), what
the partner computes for its own users with `evaluate_directly`. The partner sees only
r * H(x), a uniformly random element; the gateway cannot compute F_k without the partner.

- H (`hash_to_group`) is a random-oracle hash to the group: ``expand_message_xmd`` (SHA-512,
  RFC 9380) makes 64 bytes, each half goes through libsodium's Elligator 2 map
  (``crypto_core_ed25519_from_uniform``, which also clears the cofactor) and the two points
  are added, as RFC 9380's ``_RO_`` suites do; one map alone is an encoding whose outputs are
  not uniform, which the OPRF's pseudorandomness argument does not allow.
- Every element received is checked (`check_element`): canonical, on the curve, in the
  prime-order subgroup, not of small order (``crypto_core_ed25519_is_valid_point``), so a
  caller cannot learn k modulo the cofactor by sending a point of order 8.
- The context binds the protocol, the federation id and the federation file's digest, and is
  distinct from private alignment's tag: outputs of one co-brand deal match nothing in another.
- Outputs are 16 bytes: they index a table of at most billions of partner users, where a
  collision among 2^30 outputs has probability about 2^-69, and only the key holder can compute
  them, so a longer output buys no security while doubling the partner's index.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Final

from nacl import bindings

from cobrand.errors import ConfigError, InvalidPoint
from cobrand.psi import expand_message_xmd

if TYPE_CHECKING:
    from cobrand.federation import Federation

__all__ = [
    "ELEMENT_BYTES",
    "OUTPUT_BYTES",
    "SCALAR_BYTES",
    "blind",
    "check_element",
    "check_key",
    "context_string",
    "evaluate",
    "evaluate_directly",
    "finalize",
    "hash_to_group",
    "lookup_input",
    "new_scalar",
    "unblind",
]

PROTOCOL_VERSION: Final = 1
ELEMENT_BYTES: Final = bindings.crypto_core_ed25519_BYTES
SCALAR_BYTES: Final = bindings.crypto_core_ed25519_SCALARBYTES
OUTPUT_BYTES: Final = 16

_UNIFORM_BYTES = 2 * ELEMENT_BYTES
_WIDE_SCALAR_BYTES = bindings.crypto_core_ed25519_NONREDUCEDSCALARBYTES


def context_string(federation: Federation) -> bytes:
    """The context of one federation's consented lookups (RFC 9497's contextString).

    At most 156 bytes (the id has at most 64 characters), so every tag made from it stays
    within RFC 9380's 255.
    """
    return b"cobrand-consented-lookup-v%d:%s:%s" % (
        PROTOCOL_VERSION,
        federation.federation_id.encode(),
        federation.digest().hex().encode(),
    )


def lookup_input(kind: str, canonical_id: str) -> bytes:
    """The OPRF input of a canonical identifier of identifier kind `kind`.

    The kind is part of it, so one string read as two kinds is two inputs.
    """
    return f"{kind}\x00{canonical_id}".encode()


def hash_to_group(x: bytes, context: bytes) -> bytes:
    """H(x): an element of the prime-order subgroup, as a random oracle would give it."""
    uniform = expand_message_xmd(x, b"HashToGroup-" + context, _UNIFORM_BYTES)
    return bindings.crypto_core_ed25519_add(
        bindings.crypto_core_ed25519_from_uniform(uniform[:ELEMENT_BYTES]),
        bindings.crypto_core_ed25519_from_uniform(uniform[ELEMENT_BYTES:]),
    )


def new_scalar() -> bytes:
    """A uniformly random non-zero scalar (64 random bytes reduced modulo the group order)."""
    while True:
        scalar = bindings.crypto_core_ed25519_scalar_reduce(os.urandom(_WIDE_SCALAR_BYTES))
        if any(scalar):
            return scalar


def check_element(element: bytes, field: str) -> None:
    """Refuse anything but a canonical element of the prime-order subgroup, other than 0.

    Raises
    ------
    InvalidPoint
        Naming `field`: the wrong length, not canonical, not on the curve, of small order or
        outside the prime-order subgroup.
    """
    if len(element) != ELEMENT_BYTES:
        raise InvalidPoint(f"{field} must be {ELEMENT_BYTES} bytes, it is {len(element)}")
    if not bindings.crypto_core_ed25519_is_valid_point(element):
        raise InvalidPoint(
            f"{field} is not a canonical element of edwards25519's prime-order subgroup "
            "(or is of small order)"
        )


def check_key(key: bytes) -> None:
    """Refuse an OPRF key that is not a canonical non-zero scalar.

    Raises
    ------
    ConfigError
        The wrong length, zero, or not reduced modulo the group order.
    """
    if len(key) != SCALAR_BYTES:
        raise ConfigError(f"an OPRF key is {SCALAR_BYTES} bytes, this one is {len(key)}")
    reduced = bindings.crypto_core_ed25519_scalar_reduce(key + bytes(SCALAR_BYTES))
    if reduced != key or not any(key):
        raise ConfigError("an OPRF key must be a non-zero scalar below the group order")


def blind(x: bytes, context: bytes) -> tuple[bytes, bytes]:
    """The gateway's first step: a fresh blind r and the blinded element r * H(x).

    Returns
    -------
    tuple of bytes
        ``(r, blinded)``; r stays with the caller for `unblind`.
    """
    r = new_scalar()
    return r, bindings.crypto_scalarmult_ed25519_noclamp(r, hash_to_group(x, context))


def evaluate(key: bytes, blinded: bytes, field: str = "blinded_element") -> bytes:
    """The partner's step: k * B, once B is checked.

    Raises
    ------
    InvalidPoint
        `blinded` is no element of the group (named `field`).
    """
    check_element(blinded, field)
    return bindings.crypto_scalarmult_ed25519_noclamp(key, blinded)


def unblind(r: bytes, evaluated: bytes, field: str = "evaluated_element") -> bytes:
    """The gateway's second step: N = r^-1 * Z = k * H(x), once Z is checked.

    Raises
    ------
    InvalidPoint
        `evaluated` is no element of the group (named `field`).
    """
    check_element(evaluated, field)
    return bindings.crypto_scalarmult_ed25519_noclamp(
        bindings.crypto_core_ed25519_scalar_invert(r), evaluated
    )


def finalize(x: bytes, unblinded: bytes, context: bytes) -> bytes:
    """y = SHA-512 of the length-prefixed context, x and N, cut to `OUTPUT_BYTES`.

    As RFC 9497's Finalize, with the context added so outputs are bound to the federation.
    """
    digest = hashlib.sha512()
    for part in (context, x, unblinded):
        digest.update(len(part).to_bytes(2, "big") + part)
    digest.update(b"Finalize")
    return digest.digest()[:OUTPUT_BYTES]


def evaluate_directly(key: bytes, x: bytes, context: bytes) -> bytes:
    """F_k(x) computed by the key holder: what blind, evaluate, unblind and finalize give."""
    return finalize(
        x, bindings.crypto_scalarmult_ed25519_noclamp(key, hash_to_group(x, context)), context
    )
