"""The wire contracts are the public interface for Java and Go integrators: check conventions."""

from google.protobuf.descriptor import FileDescriptor

from cobrand.v1 import (
    alignment_pb2,
    consented_lookup_pb2,
    embedding_pb2,
    rounds_pb2,
    scoring_pb2,
    training_pb2,
)

CONTRACTS: list[FileDescriptor] = [
    alignment_pb2.DESCRIPTOR,
    consented_lookup_pb2.DESCRIPTOR,
    embedding_pb2.DESCRIPTOR,
    rounds_pb2.DESCRIPTOR,
    scoring_pb2.DESCRIPTOR,
    training_pb2.DESCRIPTOR,
]


def test_every_contract_is_in_the_versioned_package() -> None:
    for contract in CONTRACTS:
        assert contract.package == "cobrand.v1", contract.name
        options = contract.GetOptions()
        assert options.java_package == "com.cobrand.v1", contract.name
        assert options.go_package.endswith(";cobrandv1"), contract.name


def test_every_enum_starts_with_an_unspecified_zero_value() -> None:
    for contract in CONTRACTS:
        for enum in contract.enum_types_by_name.values():
            zero = enum.values_by_number[0].name
            assert zero == f"{_upper_snake(enum.name)}_UNSPECIFIED", (contract.name, enum.name)
            for value in enum.values:
                assert value.name.startswith(_upper_snake(enum.name) + "_"), value.name


def test_each_contract_holds_one_service() -> None:
    for contract in CONTRACTS:
        assert len(contract.services_by_name) == 1, contract.name


def _upper_snake(name: str) -> str:
    return "".join("_" + c if c.isupper() and i else c for i, c in enumerate(name)).upper()
