"""Specifications for the federation file: validation against the registry, a stable digest."""

import hashlib
from pathlib import Path

import pytest

from cobrand.errors import FederationError
from cobrand.federation import Federation, load_federation
from tests.cobrand.conftest import WriteText

BASE = """
    federation_id: cobrand-demo
    version: 1
    identifier_kinds:
      mobile_cn: {canonical_form: e164-cn-mobile}
      national_id_cn: {canonical_form: gb11643-upper}
"""

# Same meaning as BASE: comments, block style, other key order, quoting, blank lines.
REFORMATTED = """
    # The co-brand federation: both parties hold this exact meaning.
    identifier_kinds:
      national_id_cn:
        canonical_form: "gb11643-upper"   # GB 11643, check digit verified

      mobile_cn:
        canonical_form: 'e164-cn-mobile'
    version: 1
    federation_id: "cobrand-demo"
"""

SEMANTIC_CHANGES = {
    "federation_id": BASE.replace("cobrand-demo", "cobrand-demo-2"),
    "version": BASE.replace("version: 1", "version: 2"),
    "kind removed": BASE.replace("      national_id_cn: {canonical_form: gb11643-upper}\n", ""),
    "kind added": BASE + "      email: {canonical_form: lower-trimmed}\n",
}


def test_federation_file_loads_with_its_identifier_kinds(write_text: WriteText) -> None:
    federation = load_federation(write_text("federation.yaml", BASE))
    assert federation.federation_id == "cobrand-demo"
    assert federation.version == 1
    assert sorted(federation.identifier_kinds) == ["mobile_cn", "national_id_cn"]


def test_digest_is_stable_across_formatting_comments_and_key_order(
    write_text: WriteText,
) -> None:
    plain = load_federation(write_text("a.yaml", BASE))
    reformatted = load_federation(write_text("b.yaml", REFORMATTED))
    assert plain.digest() == reformatted.digest()


@pytest.mark.parametrize("change", sorted(SEMANTIC_CHANGES))
def test_digest_changes_with_any_change_of_meaning(write_text: WriteText, change: str) -> None:
    base = load_federation(write_text("base.yaml", BASE)).digest()
    changed = load_federation(write_text("changed.yaml", SEMANTIC_CHANGES[change])).digest()
    assert changed != base


def test_digest_is_sha256_of_the_pinned_canonical_json(write_text: WriteText) -> None:
    # Pinned: a party on another release must derive the same PSI domain separator, so the
    # canonical encoding may never drift silently.
    canonical = (
        b'{"federation_id":"cobrand-demo","identifier_kinds":{"mobile_cn":{"canonical_form":'
        b'"e164-cn-mobile"},"national_id_cn":{"canonical_form":"gb11643-upper"}},"version":1}'
    )
    digest = load_federation(write_text("federation.yaml", BASE)).digest()
    assert digest == hashlib.sha256(canonical).digest()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("mobile_cn: {canonical_form: e164-cn-mobile}", "passport: {canonical_form: icao}"),
            r"key 'identifier_kinds': 'passport' is not a known identifier kind",
        ),
        (
            ("canonical_form: e164-cn-mobile", "canonical_form: e164"),
            r"key 'identifier_kinds': mobile_cn.canonical_form is 'e164', but .* 'e164-cn-mobile'",
        ),
        (("cobrand-demo", "Cobrand Demo"), r"key 'federation_id': String should match pattern"),
        (("cobrand-demo", "cd"), r"key 'federation_id'"),
        (("version: 1", "version: 0"), r"key 'version': Input should be greater than or equal"),
        (("version: 1", "version: '1'"), r"key 'version': Input should be a valid integer"),
        (("version: 1", "versoin: 1"), r"unknown key 'versoin' \(did you mean 'version'\?\)"),
        (("{canonical_form:", "{form:"), r"unknown key 'identifier_kinds.mobile_cn.form'"),
    ],
)
def test_invalid_federation_file_is_refused_naming_file_and_key(
    write_text: WriteText, edit: tuple[str, str], expected: str
) -> None:
    path = write_text("federation.yaml", BASE.replace(*edit, 1))
    with pytest.raises(FederationError, match=expected) as raised:
        load_federation(path)
    assert str(raised.value).startswith(f"{path}: ")


def test_federation_without_identifier_kinds_is_refused(write_text: WriteText) -> None:
    path = write_text("federation.yaml", "federation_id: abc\nversion: 1\nidentifier_kinds: {}\n")
    with pytest.raises(FederationError, match=r"key 'identifier_kinds': .*at least 1 item"):
        load_federation(path)


def test_key_written_twice_is_refused_with_its_line(write_text: WriteText) -> None:
    path = write_text("federation.yaml", BASE + "    version: 2\n")
    with pytest.raises(
        FederationError, match=r"line 6, column 1: .*key 'version' is written twice"
    ):
        load_federation(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("federation_id: [unclosed\n", r"line \d+, column \d+: not valid YAML"),
        ("- a list\n", r"top level must be a mapping of keys, not a list"),
        ("", r"missing key 'federation_id'"),
    ],
)
def test_file_that_is_not_a_federation_mapping_is_refused(
    write_text: WriteText, text: str, expected: str
) -> None:
    with pytest.raises(FederationError, match=expected):
        load_federation(write_text("federation.yaml", text))


def test_missing_federation_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(FederationError, match=rf"cannot read {path}"):
        load_federation(path)


def test_federation_is_frozen(write_text: WriteText) -> None:
    federation: Federation = load_federation(write_text("federation.yaml", BASE))
    with pytest.raises(ValueError, match="frozen"):
        federation.version = 2
