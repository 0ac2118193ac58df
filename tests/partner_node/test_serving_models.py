"""The partner's loaded model versions: built once per version and alignment in the background,
at most two kept (least recently used out), a new alignment picked up by the next lookup."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cobrand.errors import FailedPrecondition, InvalidRequest, Unavailable, UnknownModelVersion
from partner_node.serving_models import ServingModels
from tests.partner_node.embedding_sites import (
    PublishedVersion,
    aligned_customers,
    partner_table,
    publish_version,
    realign,
)
from tests.training_sites import TrainingSites, write_training_sites

WAIT_S = 30.0


@pytest.fixture
def sites(tmp_path: Path) -> TrainingSites:
    return write_training_sites(tmp_path, customers=300, seed=23)


@pytest.fixture
def versions(sites: TrainingSites) -> list[PublishedVersion]:
    return [publish_version(sites, seed=seed, width=3) for seed in (1, 2, 3)]


def _models(sites: TrainingSites) -> ServingModels:
    return ServingModels(partner_table(sites)[0], sites.partner_data / "models", sites.partner_data)


def test_each_version_embeds_the_aligned_customers_with_its_own_bottom(
    sites: TrainingSites, versions: list[PublishedVersion]
) -> None:
    models = _models(sites)
    customers = aligned_customers(sites, 5)
    keys = np.frombuffer(b"".join(key for key, _ in customers) + os.urandom(16), dtype="S16")

    for version in versions[:2]:
        matrix, found = models.version(version.version_id, WAIT_S).lookup(keys)

        assert found.tolist() == [True] * 5 + [False]
        assert not matrix[5].any()
        np.testing.assert_allclose(
            matrix[:5], version.expected([i for _, i in customers]), rtol=1e-5, atol=1e-6
        )


def test_at_most_two_versions_stay_loaded_the_least_recently_used_goes_first(
    sites: TrainingSites, versions: list[PublishedVersion]
) -> None:
    models = _models(sites)
    first, second, third = (v.version_id for v in versions)
    loaded = {v: models.version(v, WAIT_S) for v in (first, second)}

    again = models.version(first, WAIT_S)
    models.version(third, WAIT_S)

    assert again is loaded[first]
    assert models.version(first, WAIT_S) is loaded[first]
    assert models.version(second, WAIT_S) is not loaded[second]


def test_requests_for_versions_that_do_not_exist_unload_nothing(
    sites: TrainingSites, versions: list[PublishedVersion]
) -> None:
    models = _models(sites)
    loaded = [models.version(v.version_id, WAIT_S) for v in versions[:2]]

    with pytest.raises(UnknownModelVersion, match="model_version 00000000000000aa is not"):
        models.version("00000000000000aa", WAIT_S)
    with pytest.raises(InvalidRequest, match=r"^model_version: model version 'latest' is not"):
        models.version("latest", WAIT_S)

    assert all(
        models.version(v.version_id, WAIT_S) is held
        for v, held in zip(versions[:2], loaded, strict=True)
    )


def test_a_version_still_loading_is_unavailable_until_it_has_loaded(
    sites: TrainingSites, versions: list[PublishedVersion]
) -> None:
    models = _models(sites)

    with pytest.raises(Unavailable, match=f"model version {versions[0].version_id} is still"):
        models.version(versions[0].version_id, 0.0)
    loaded = models.version(versions[0].version_id, WAIT_S)

    assert loaded.version_id == versions[0].version_id


def test_a_new_alignment_replaces_the_key_index_at_the_next_lookup(
    sites: TrainingSites, versions: list[PublishedVersion]
) -> None:
    models = _models(sites)
    version = versions[0]
    old_key, customer = aligned_customers(sites, 1)[0]
    before = models.version(version.version_id, WAIT_S).embedding(old_key)

    new_keys = realign(sites, "alignment-again", seed=99)
    after = models.version(version.version_id, WAIT_S)

    assert after.index.alignment.run_id == "alignment-again"
    assert after.embedding(old_key) is None
    assert before is not None
    np.testing.assert_array_equal(after.embedding(new_keys[customer]), before)


def test_a_partner_without_an_alignment_says_so(
    sites: TrainingSites, versions: list[PublishedVersion]
) -> None:
    (sites.partner_data / "alignment.sqlite").unlink()

    with pytest.raises(FailedPrecondition, match="the partner has no alignment yet"):
        _models(sites).version(versions[0].version_id, WAIT_S)


def test_a_damaged_version_is_refused_naming_its_file_and_other_versions_still_load(
    sites: TrainingSites, versions: list[PublishedVersion]
) -> None:
    damaged = sites.partner_data / "models" / versions[0].version_id / "partner_bottom.pt"
    content = damaged.read_bytes()
    damaged.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    models = _models(sites)

    for _ in range(2):
        with pytest.raises(FailedPrecondition, match=r"partner_bottom\.pt has \d+ bytes"):
            models.version(versions[0].version_id, WAIT_S)
    loaded = models.version(versions[1].version_id, WAIT_S)

    assert loaded.version_id == versions[1].version_id
