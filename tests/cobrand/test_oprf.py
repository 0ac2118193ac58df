"""The consented lookup's OPRF: RFC 9497's OPRF(ristretto255, SHA-512) to its test vectors,
the blinded protocol gives the key holder's own evaluation, co-brand deals and identifier kinds
are separated, and hostile elements and keys are refused."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cobrand import oprf
from cobrand.errors import ConfigError, InvalidPoint, InvalidRequest
from cobrand.federation import Federation, IdentifierKindEntry
from cobrand.psi import expand_message_xmd

ORDER = 2**252 + 27742317777372353535851937790883648493
P = 2**255 - 19
KINDS = {"mobile_cn": IdentifierKindEntry(canonical_form="e164-cn-mobile")}
DOMAIN = oprf.lookup_domain(Federation(federation_id="test", version=1, identifier_kinds=KINDS))
inputs = st.binary(min_size=0, max_size=80)

# RFC 9497 Appendix A.1.1, OPRF(ristretto255, SHA-512), OPRF mode: the key pair's seed and info
# and the key derived, then each test vector (batch size 1) as Input, Blind, BlindedElement,
# EvaluationElement, Output. Copied from the RFC's vectors as the CFRG draft's repository ships
# them (cfrg/draft-irtf-cfrg-voprf, poc/vectors/allVectors.json).
SEED = bytes.fromhex("a3" * 32)
KEY_INFO = bytes.fromhex("74657374206b6579")
SK_SM = bytes.fromhex("5ebcea5ee37023ccb9fc2d2019f9d7737be85591ae8652ffa9ef0f4d37063b0e")
VECTORS = [
    (
        "00",
        "64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706",
        "609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c",
        "7ec6578ae5120958eb2db1745758ff379e77cb64fe77b0b2d8cc917ea0869c7e",
        "527759c3d9366f277d8c6020418d96bb393ba2afb20ff90df23fb7708264e2f3"
        "ab9135e3bd69955851de4b1f9fe8a0973396719b7912ba9ee8aa7d0b5e24bcf6",
    ),
    (
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
        "64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706",
        "da27ef466870f5f15296299850aa088629945a17d1f5b7f5ff043f76b3c06418",
        "b4cbf5a4f1eeda5a63ce7b77c7d23f461db3fcab0dd28e4e17cecb5c90d02c25",
        "f4a74c9c592497375e796aa837e907b1a045d34306a749db9f34221f7e750cb4"
        "f2a6413a6bf6fa5e19ba6348eb673934a722a7ede2e7621306d18951e7cf2c73",
    ),
]
# Encodings an attacker sends: the identity, and non-canonical or off-group ones (ristretto255
# Decode refuses s >= p, a negative s, i.e. an odd one, and s with no element).
IDENTITY = bytes(32)
NOT_CANONICAL = [
    P.to_bytes(32, "little"),
    (P + 1).to_bytes(32, "little"),
    (1).to_bytes(32, "little"),
    b"\xff" * 32,
]


def _derive_key_pair(seed: bytes, info: bytes) -> bytes:
    """RFC 9497 section 3.2.1's DeriveKeyPair, skS only: HashToScalar is reduced in Python."""
    derive_input = seed + len(info).to_bytes(2, "big") + info
    for counter in range(256):
        uniform = expand_message_xmd(
            derive_input + bytes([counter]), b"DeriveKeyPair" + oprf.CONTEXT_STRING, 64
        )
        scalar = int.from_bytes(uniform, "little") % ORDER
        if scalar:
            return scalar.to_bytes(32, "little")
    raise AssertionError("DeriveKeyPairError")


def test_expand_message_xmd_gives_rfc_9380s_sha512_vectors() -> None:
    # RFC 9380 Appendix K.3, expand_message_xmd(SHA-512), len_in_bytes = 0x20.
    dst = b"QUUX-V01-CS02-with-expander-SHA512-256"
    assert expand_message_xmd(b"", dst, 32).hex() == (
        "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"
    )
    assert expand_message_xmd(b"abc", dst, 32).hex() == (
        "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"
    )


def test_derive_key_pair_gives_the_rfcs_key() -> None:
    assert _derive_key_pair(SEED, KEY_INFO) == SK_SM
    oprf.check_key(SK_SM)


@pytest.mark.parametrize(
    ("x", "r", "blinded", "evaluated", "output"), VECTORS, ids=["vector1", "vector2"]
)
def test_blind_evaluate_and_finalize_give_the_rfcs_vectors(
    monkeypatch: pytest.MonkeyPatch, x: str, r: str, blinded: str, evaluated: str, output: str
) -> None:
    # The RFC fixes the blind, which Blind draws at random.
    monkeypatch.setattr(oprf, "new_scalar", lambda: bytes.fromhex(r))
    blind, blinded_element = oprf.blind(bytes.fromhex(x))
    assert (blind.hex(), blinded_element.hex()) == (r, blinded)

    evaluation_element = oprf.blind_evaluate(SK_SM, blinded_element)
    assert evaluation_element.hex() == evaluated

    assert oprf.finalize(bytes.fromhex(x), blind, evaluation_element).hex() == output
    assert oprf.evaluate(SK_SM, bytes.fromhex(x)).hex() == output


@settings(max_examples=40, deadline=None)
@given(x=inputs)
def test_blinded_evaluation_equals_the_key_holders_direct_evaluation(x: bytes) -> None:
    key = oprf.new_scalar()
    r, blinded = oprf.blind(x)
    output = oprf.finalize(x, r, oprf.blind_evaluate(key, blinded))

    assert output == oprf.evaluate(key, x)
    assert len(output) == oprf.HASH_BYTES
    assert len(oprf.lookup_output(output)) == oprf.OUTPUT_BYTES


def test_the_blinded_element_is_fresh_on_every_call_and_a_group_element() -> None:
    x = DOMAIN + oprf.lookup_input("mobile_cn", "+8613800138000")
    blinded = {oprf.blind(x)[1] for _ in range(20)}

    assert len(blinded) == 20
    for element in blinded:
        oprf.check_element(element, "blinded")


def test_evaluating_under_two_keys_is_evaluating_under_their_product() -> None:
    k1, k2 = 3, 5
    element = oprf.hash_to_group(b"x")

    twice = oprf.blind_evaluate(
        k2.to_bytes(32, "little"), oprf.blind_evaluate(k1.to_bytes(32, "little"), element)
    )

    assert twice == oprf.blind_evaluate((k1 * k2).to_bytes(32, "little"), element)


@settings(max_examples=30, deadline=None)
@given(pair=st.lists(inputs, min_size=2, max_size=2, unique=True))
def test_different_inputs_give_different_outputs(pair: list[bytes]) -> None:
    key = oprf.new_scalar()
    first, second = (oprf.evaluate(key, x) for x in pair)
    assert first != second


def test_another_key_federation_or_federation_file_gives_another_output() -> None:
    key = oprf.new_scalar()
    base = oprf.evaluate_lookup(key, DOMAIN, "mobile_cn", "+8613800138000")
    other_deal = oprf.lookup_domain(
        Federation(federation_id="other", version=1, identifier_kinds=KINDS)
    )
    other_file = oprf.lookup_domain(
        Federation(federation_id="test", version=2, identifier_kinds=KINDS)
    )

    assert oprf.evaluate_lookup(oprf.new_scalar(), DOMAIN, "mobile_cn", "+8613800138000") != base
    assert oprf.evaluate_lookup(key, other_deal, "mobile_cn", "+8613800138000") != base
    assert oprf.evaluate_lookup(key, other_file, "mobile_cn", "+8613800138000") != base


def test_one_identifier_read_as_two_kinds_is_two_inputs_and_two_outputs() -> None:
    key = oprf.new_scalar()
    assert oprf.lookup_input("mobile_cn", "1") != oprf.lookup_input("customer_number", "1")
    assert oprf.evaluate_lookup(key, DOMAIN, "mobile_cn", "1") != oprf.evaluate_lookup(
        key, DOMAIN, "customer_number", "1"
    )


def test_the_fields_are_length_prefixed_so_no_boundary_shift_gives_the_same_input() -> None:
    assert oprf.lookup_input("ab", "c") != oprf.lookup_input("a", "bc")
    assert oprf.lookup_input("a", "b") == b"\x00\x01a\x00\x01b"


def test_the_domain_binds_the_protocol_version_the_federation_and_its_file() -> None:
    federation = Federation(federation_id="deal-a", version=1, identifier_kinds=KINDS)
    tag = b"cobrand-consented-lookup-v2"
    assert oprf.lookup_domain(federation) == (
        len(tag).to_bytes(2, "big") + tag + b"\x00\x06deal-a" + b"\x00\x20" + federation.digest()
    )


def test_an_input_too_long_to_length_prefix_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="a canonical identifier is 65536 bytes"):
        oprf.lookup_input("mobile_cn", "1" * 65536)
    with pytest.raises(InvalidRequest, match="an OPRF input is 65536 bytes"):
        oprf.blind(bytes(65536))


def test_the_identity_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidPoint, match="blinded_element is the identity"):
        oprf.blind_evaluate(oprf.new_scalar(), IDENTITY)
    with pytest.raises(InvalidPoint, match="evaluated_element is the identity"):
        oprf.finalize(b"x", oprf.new_scalar(), IDENTITY)


@pytest.mark.parametrize("element", NOT_CANONICAL, ids=["p", "p+1", "negative", "all-ones"])
def test_a_non_canonical_encoding_is_refused_naming_the_field(element: bytes) -> None:
    with pytest.raises(InvalidPoint, match="blinded_element is not the canonical encoding"):
        oprf.blind_evaluate(oprf.new_scalar(), element)
    with pytest.raises(InvalidPoint, match="evaluated_element is not the canonical encoding"):
        oprf.finalize(b"x", oprf.new_scalar(), element)


def test_an_element_of_the_edwards25519_encoding_is_no_ristretto255_element() -> None:
    # The base point as edwards25519 encodes it (y = 4/5): a client of the former suite is
    # refused, not answered in another group.
    base = bytes.fromhex("5866666666666666666666666666666666666666666666666666666666666666")
    with pytest.raises(InvalidPoint, match="canonical encoding"):
        oprf.check_element(base, "blinded_element")


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_an_element_of_the_wrong_length_is_refused_naming_its_length(length: int) -> None:
    with pytest.raises(InvalidPoint, match=f"blinded_element must be 32 bytes, it is {length}"):
        oprf.blind_evaluate(oprf.new_scalar(), bytes(length))


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (bytes(31), "32 bytes"),
        (bytes(32), "non-zero"),
        (ORDER.to_bytes(32, "little"), "below the group order"),
        (b"\xff" * 32, "below the group order"),
    ],
    ids=["short", "zero", "order", "unreduced"],
)
def test_a_bad_key_is_refused(key: bytes, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        oprf.check_key(key)


def test_a_fresh_scalar_is_a_valid_key_and_a_key_of_the_former_group_still_is() -> None:
    oprf.check_key(oprf.new_scalar())
    # edwards25519's prime-order subgroup and ristretto255 have the same order: a key file
    # made before (a canonical non-zero scalar) is still a key.
    oprf.check_key((ORDER - 1).to_bytes(32, "little"))
