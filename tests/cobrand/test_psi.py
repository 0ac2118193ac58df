"""ECDH-PSI primitives: known answers from RFC 9380, commutativity, and hostile points."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cobrand import psi
from cobrand.errors import InvalidPoint
from cobrand.federation import Federation, IdentifierKindEntry

P = 2**255 - 19
A = 486662
RFC_XMD_DST = b"QUUX-V01-CS02-with-expander-SHA512-256"
RFC_NU_DST = b"QUUX-V01-CS02-with-curve25519_XMD:SHA-512_ELL2_NU_"
# RFC 9380 J.7.2, curve25519_XMD:SHA-512_ELL2_NU_: message -> (Q.x, P.x = x of 8Q)
RFC_NU_VECTORS = {
    "": (
        "51125222da5e763d97f3c10fcc92ea6860b9ccbbd2eb1285728f566721c1e65b",
        "1bb913f0c9daefa0b3375378ffa534bda5526c97391952a7789eb976edfe4d08",
    ),
    "abc": (
        "7d56d1e08cb0ccb92baf069c18c49bb5a0dcd927eff8dcf75ca921ef7f3e6eeb",
        "7c22950b7d900fa866334262fcaea47a441a578df43b894b4625c9b450f9a026",
    ),
}
# The points of small order on Curve25519 and its twist (u-coordinates), as attackers send them.
LOW_ORDER_POINTS = [
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    P - 1,
]
DOMAIN = b"cobrand-psi-v1:test:00"
identifiers = st.text(min_size=1, max_size=40)


def _double(x: int) -> int:
    # x-only doubling on y^2 = x^3 + A x^2 + x.
    return (x * x - 1) ** 2 * pow(4 * x * (x * x + A * x + 1), -1, P) % P


def _on_curve(u: int) -> bool:
    rhs = (u**3 + A * u * u + u) % P
    return rhs == 0 or pow(rhs, (P - 1) // 2, P) == 1


def test_expand_message_xmd_matches_rfc_9380_vectors() -> None:
    assert psi.expand_message_xmd(b"", RFC_XMD_DST, 32).hex() == (
        "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"
    )
    assert psi.expand_message_xmd(b"abc", RFC_XMD_DST, 32).hex() == (
        "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"
    )


@pytest.mark.parametrize("message", list(RFC_NU_VECTORS))
def test_hash_to_point_is_rfc_9380_encode_to_curve_before_cofactor_clearing(message: str) -> None:
    q_x, p_x = RFC_NU_VECTORS[message]

    u = int.from_bytes(psi.hash_to_point(message, RFC_NU_DST), "little")

    assert u == int(q_x, 16)
    assert _double(_double(_double(u))) == int(p_x, 16)


@settings(max_examples=200)
@given(identifiers)
def test_hashed_points_lie_on_the_curve_never_its_twist(identifier: str) -> None:
    assert _on_curve(int.from_bytes(psi.hash_to_point(identifier, DOMAIN), "little"))


@settings(max_examples=50)
@given(st.lists(identifiers, max_size=30))
def test_hashing_a_batch_equals_hashing_each_identifier_alone(batch: list[str]) -> None:
    # The batch shares one modular inversion (Montgomery's trick) across its identifiers.
    alone = b"".join(psi.hash_to_point(identifier, DOMAIN) for identifier in batch)

    assert psi.hash_to_points(batch, DOMAIN) == alone


@settings(max_examples=50)
@given(identifiers)
def test_blinding_commutes(identifier: str) -> None:
    a, b = psi.new_secret(), psi.new_secret()
    point = psi.hash_to_point(identifier, DOMAIN)

    assert psi.blind(psi.blind(point, a), b) == psi.blind(psi.blind(point, b), a)


def test_the_wrong_secret_matches_nobody() -> None:
    a, b, wrong = psi.new_secret(), psi.new_secret(), psi.new_secret()
    point = psi.hash_to_point("+8613812345678", DOMAIN)

    assert psi.blind(psi.blind(point, a), b) != psi.blind(psi.blind(point, wrong), a)


def test_domain_separates_federations() -> None:
    kinds = {"mobile_cn": IdentifierKindEntry(canonical_form="e164-cn-mobile")}
    deal = Federation(federation_id="deal-a", version=1, identifier_kinds=kinds)
    other_deal = Federation(federation_id="deal-b", version=1, identifier_kinds=kinds)
    next_version = Federation(federation_id="deal-a", version=2, identifier_kinds=kinds)

    tags = {psi.domain_tag(f) for f in (deal, other_deal, next_version)}
    points = {psi.hash_to_point("+8613812345678", tag) for tag in tags}

    assert len(tags) == 3
    assert len(points) == 3


def test_batches_keep_order_and_join_keys_agree_on_both_sides() -> None:
    ids = [f"+86138{i:08d}" for i in range(50)]
    a, b = psi.new_secret(), psi.new_secret()
    bank_side = psi.blind(psi.blind(psi.hash_to_points(ids, DOMAIN), a), b)
    partner_side = psi.blind(psi.blind(psi.hash_to_points(reversed(ids), DOMAIN), b), a)

    bank_keys = psi.join_keys(bank_side, DOMAIN)
    partner_keys = psi.join_keys(partner_side, DOMAIN)

    assert bank_keys == partner_keys[::-1]
    assert len(set(bank_keys)) == 50
    assert all(len(key) == psi.JOIN_KEY_BYTES for key in bank_keys)


@pytest.mark.parametrize("u", LOW_ORDER_POINTS)
def test_low_order_points_are_refused(u: int) -> None:
    good = psi.hash_to_point("x", DOMAIN)
    with pytest.raises(InvalidPoint, match="point 1 has low order"):
        psi.blind(good + u.to_bytes(32, "little"), psi.new_secret())


def test_non_canonical_point_encodings_are_refused() -> None:
    with pytest.raises(InvalidPoint, match="point 0 is not a canonical"):
        psi.blind((P + 9).to_bytes(32, "little"), psi.new_secret())


@pytest.mark.parametrize("length", [1, 31, 33, 65])
def test_truncated_chunks_are_refused(length: int) -> None:
    with pytest.raises(InvalidPoint, match=f"{length} bytes, not a multiple of 32"):
        psi.blind(os.urandom(length), psi.new_secret())
