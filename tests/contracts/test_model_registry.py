"""ModelRegistry: registration, every owner-only change, retirement, transfer, profiles, views and refusals."""

from __future__ import annotations

from typing import Any

import pytest
from contracts_support import events, expect_revert, send
from eth_abi import encode as abi_encode
from eth_utils import keccak
from web3.contract import Contract

NONE, ACTIVE, PAUSED, RETIRED = range(4)
RAW, DAG_PB = 0x55, 0x70
ZERO = "0x" + "00" * 20
SALT = keccak(b"my model")
METADATA = (RAW, keccak(b"metadata v1"))
ARTIFACT = (DAG_PB, keccak(b"artifact v1"))
ENDPOINT = "https://provider.example/v1/models/churn"
PRICE = 2 * 10**15


@pytest.fixture
def registry(contracts: Any) -> Contract:
    return contracts.registry


@pytest.fixture
def owner(accounts: list[str]) -> str:
    return accounts[1]


@pytest.fixture
def payee(accounts: list[str]) -> str:
    return accounts[2]


@pytest.fixture
def model(registry: Contract, owner: str, payee: str) -> bytes:
    send(registry.functions.registerModel(SALT, payee, PRICE, METADATA, ARTIFACT, ENDPOINT), owner)
    return registry.functions.modelIdOf(owner, SALT).call()


def test_register_stores_four_slots_and_emits_the_catalog_entry(registry: Contract, owner: str, payee: str) -> None:
    model_id = keccak(abi_encode(["address", "bytes32"], [owner, SALT]))
    assert registry.functions.modelIdOf(owner, SALT).call() == model_id
    assert (
        registry.functions.registerModel(SALT, payee, PRICE, METADATA, ARTIFACT, ENDPOINT).call({"from": owner})
        == model_id
    )

    receipt = send(registry.functions.registerModel(SALT, payee, PRICE, METADATA, ARTIFACT, ENDPOINT), owner)

    assert events(registry, "ModelRegistered", receipt) == [
        {
            "modelId": model_id,
            "owner": owner,
            "payee": payee,
            "price": PRICE,
            "metadata": METADATA,
            "endpoint": ENDPOINT,
        }
    ]
    assert events(registry, "ArtifactPublished", receipt) == [{"modelId": model_id, "version": 1, "artifact": ARTIFACT}]
    assert registry.functions.getModel(model_id).call() == (
        owner,
        PRICE,
        payee,
        RAW,
        DAG_PB,
        1,
        ACTIVE,
        METADATA[1],
        ARTIFACT[1],
    )
    assert registry.functions.isActive(model_id).call() is True
    assert registry.functions.priceOf(model_id).call() == PRICE


def test_ids_include_the_owner_so_nobody_can_squat_them(registry: Contract, model: bytes, accounts: list[str]) -> None:
    squatter = accounts[5]
    send(registry.functions.registerModel(SALT, squatter, 1, METADATA, ARTIFACT, ""), squatter)
    assert registry.functions.modelIdOf(squatter, SALT).call() != model
    assert registry.functions.getModel(model).call()[0] == accounts[1]


def test_register_refusals(registry: Contract, model: bytes, owner: str, payee: str) -> None:
    register = registry.functions.registerModel
    with expect_revert("ModelRegistryModelExists", model):
        send(register(SALT, payee, PRICE, METADATA, ARTIFACT, ENDPOINT), owner)
    other = keccak(b"other")
    with expect_revert("ModelRegistryZeroAddress"):
        send(register(other, ZERO, PRICE, METADATA, ARTIFACT, ENDPOINT), owner)
    with expect_revert("ModelRegistryZeroPrice"):
        send(register(other, payee, 0, METADATA, ARTIFACT, ENDPOINT), owner)
    with expect_revert("ModelRegistryZeroDigest"):
        send(register(other, payee, PRICE, (RAW, bytes(32)), ARTIFACT, ENDPOINT), owner)
    with expect_revert("ModelRegistryZeroDigest"):
        send(register(other, payee, PRICE, METADATA, (RAW, bytes(32)), ENDPOINT), owner)


def test_artifact_history_is_append_only(registry: Contract, model: bytes, owner: str) -> None:
    for version in (2, 3):
        artifact = (RAW, keccak(b"artifact v%d" % version))
        assert registry.functions.publishArtifact(model, artifact).call({"from": owner}) == version
        receipt = send(registry.functions.publishArtifact(model, artifact), owner)
        assert events(registry, "ArtifactPublished", receipt) == [
            {"modelId": model, "version": version, "artifact": artifact}
        ]
    stored = registry.functions.getModel(model).call()
    assert (stored[4], stored[5], stored[8]) == (RAW, 3, keccak(b"artifact v3"))
    with expect_revert("ModelRegistryZeroDigest"):
        send(registry.functions.publishArtifact(model, (RAW, bytes(32))), owner)


def test_owner_updates_emit_events(
    registry: Contract, model: bytes, owner: str, payee: str, accounts: list[str]
) -> None:
    new_metadata = (DAG_PB, keccak(b"metadata v2"))
    receipt = send(registry.functions.setMetadata(model, new_metadata), owner)
    assert events(registry, "MetadataUpdated", receipt) == [{"modelId": model, "metadata": new_metadata}]

    receipt = send(registry.functions.setPrice(model, 3 * PRICE), owner)
    assert events(registry, "PriceChanged", receipt) == [{"modelId": model, "oldPrice": PRICE, "newPrice": 3 * PRICE}]

    receipt = send(registry.functions.setEndpoint(model, "https://elsewhere.example/v1"), owner)
    assert events(registry, "EndpointChanged", receipt) == [
        {"modelId": model, "endpoint": "https://elsewhere.example/v1"}
    ]

    receipt = send(registry.functions.setPayee(model, accounts[6]), owner)
    assert events(registry, "PayeeChanged", receipt) == [{"modelId": model, "oldPayee": payee, "newPayee": accounts[6]}]

    assert registry.functions.getModel(model).call() == (
        owner,
        3 * PRICE,
        accounts[6],
        DAG_PB,
        DAG_PB,
        1,
        ACTIVE,
        new_metadata[1],
        ARTIFACT[1],
    )
    with expect_revert("ModelRegistryZeroPrice"):
        send(registry.functions.setPrice(model, 0), owner)
    with expect_revert("ModelRegistryZeroAddress"):
        send(registry.functions.setPayee(model, ZERO), owner)
    with expect_revert("ModelRegistryZeroDigest"):
        send(registry.functions.setMetadata(model, (RAW, bytes(32))), owner)


def test_pause_and_unpause(registry: Contract, model: bytes, owner: str) -> None:
    with expect_revert("ModelRegistryPausedUnchanged", model, False):
        send(registry.functions.setPaused(model, False), owner)
    receipt = send(registry.functions.setPaused(model, True), owner)
    assert events(registry, "ModelPaused", receipt) == [{"modelId": model}]
    assert registry.functions.isActive(model).call() is False
    assert registry.functions.getModel(model).call()[6] == PAUSED
    with expect_revert("ModelRegistryPausedUnchanged", model, True):
        send(registry.functions.setPaused(model, True), owner)
    send(registry.functions.setPrice(model, PRICE + 1), owner)  # a paused model can still be edited
    receipt = send(registry.functions.setPaused(model, False), owner)
    assert events(registry, "ModelUnpaused", receipt) == [{"modelId": model}]
    assert registry.functions.isActive(model).call() is True


def test_retirement_is_final(registry: Contract, model: bytes, owner: str, accounts: list[str]) -> None:
    send(registry.functions.setPaused(model, True), owner)
    receipt = send(registry.functions.retire(model), owner)
    assert events(registry, "ModelRetired", receipt) == [{"modelId": model}]
    assert registry.functions.getModel(model).call()[6] == RETIRED
    assert registry.functions.isActive(model).call() is False
    changes = [
        registry.functions.publishArtifact(model, ARTIFACT),
        registry.functions.setMetadata(model, METADATA),
        registry.functions.setPrice(model, 1),
        registry.functions.setEndpoint(model, ""),
        registry.functions.setPayee(model, owner),
        registry.functions.setPaused(model, False),
        registry.functions.retire(model),
        registry.functions.transferModel(model, accounts[6]),
    ]
    for change in changes:
        with expect_revert("ModelRegistryModelRetired", model):
            send(change, owner)
    with expect_revert("ModelRegistryModelExists", model):  # and the id is never reused
        send(registry.functions.registerModel(SALT, owner, 1, METADATA, ARTIFACT, ""), owner)


def test_transfer_hands_over_control(
    registry: Contract, model: bytes, owner: str, payee: str, accounts: list[str]
) -> None:
    new_owner = accounts[6]
    with expect_revert("ModelRegistryZeroAddress"):
        send(registry.functions.transferModel(model, ZERO), owner)
    receipt = send(registry.functions.transferModel(model, new_owner), owner)
    assert events(registry, "ModelTransferred", receipt) == [
        {"modelId": model, "previousOwner": owner, "newOwner": new_owner}
    ]
    stored = registry.functions.getModel(model).call()
    assert (stored[0], stored[2]) == (new_owner, payee)  # the payee stays until the new owner changes it
    with expect_revert("ModelRegistryNotOwner", model, owner, new_owner):
        send(registry.functions.setPrice(model, 1), owner)
    send(registry.functions.setPrice(model, 1), new_owner)


def test_only_the_owner_changes_a_model(registry: Contract, model: bytes, owner: str, accounts: list[str]) -> None:
    stranger = accounts[7]
    changes = [
        registry.functions.publishArtifact(model, ARTIFACT),
        registry.functions.setMetadata(model, METADATA),
        registry.functions.setPrice(model, 1),
        registry.functions.setEndpoint(model, ""),
        registry.functions.setPayee(model, stranger),
        registry.functions.setPaused(model, True),
        registry.functions.retire(model),
        registry.functions.transferModel(model, stranger),
    ]
    for change in changes:
        with expect_revert("ModelRegistryNotOwner", model, stranger, owner):
            send(change, stranger)


def test_unknown_models(registry: Contract, owner: str) -> None:
    unknown = keccak(b"nobody registered this")
    with expect_revert("ModelRegistryUnknownModel", unknown):
        send(registry.functions.setPrice(unknown, 1), owner)
    with expect_revert("ModelRegistryUnknownModel", unknown):
        registry.functions.priceOf(unknown).call()
    assert registry.functions.getModel(unknown).call() == (ZERO, 0, ZERO, 0, 0, 0, NONE, bytes(32), bytes(32))
    assert registry.functions.isActive(unknown).call() is False


def test_provider_profiles(registry: Contract, owner: str) -> None:
    profile = (RAW, keccak(b"profile json"))
    receipt = send(registry.functions.setProviderProfile(profile), owner)
    assert events(registry, "ProviderProfileUpdated", receipt) == [{"provider": owner, "profile": profile}]
    assert registry.functions.providerProfile(owner).call() == profile
    send(registry.functions.setProviderProfile((0, bytes(32))), owner)  # a zero digest clears it
    assert registry.functions.providerProfile(owner).call() == (0, bytes(32))


def test_payment_token(registry: Contract, contracts: Any) -> None:
    assert registry.functions.paymentToken().call() == contracts.token.address


# --- per-token prices ------------------------------------------------------------------------------------------------


def test_token_prices_are_set_by_the_owner_and_read_back(
    registry: Contract, model: bytes, owner: str, accounts: list[str]
) -> None:
    assert registry.functions.tokenPricesOf(model).call() == (0, 0, 0)  # a flat model
    prices = (3 * 10**12, 9 * 10**12, 4_096)

    receipt = send(registry.functions.setTokenPrices(model, prices), owner)

    assert events(registry, "TokenPricesChanged", receipt) == [
        {"modelId": model, "perInputToken": prices[0], "perOutputToken": prices[1], "maxOutputTokens": prices[2]}
    ]
    assert registry.functions.tokenPricesOf(model).call() == prices
    assert registry.functions.priceOf(model).call() == PRICE  # the per-call price stays, charged on top
    send(registry.functions.setTokenPrices(model, (0, 0, 0)), owner)  # flat again
    assert registry.functions.tokenPricesOf(model).call() == (0, 0, 0)

    stranger = accounts[5]
    with expect_revert("ModelRegistryNotOwner", model, stranger, owner):
        send(registry.functions.setTokenPrices(model, prices), stranger)
    unknown = keccak(b"no such model")
    assert registry.functions.tokenPricesOf(unknown).call() == (0, 0, 0)
    with expect_revert("ModelRegistryUnknownModel", unknown):
        send(registry.functions.setTokenPrices(unknown, prices), owner)
    send(registry.functions.retire(model), owner)
    with expect_revert("ModelRegistryModelRetired", model):
        send(registry.functions.setTokenPrices(model, prices), owner)
    assert registry.functions.tokenPricesOf(model).call() == (0, 0, 0)  # still readable after retirement
