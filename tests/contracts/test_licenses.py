"""Licenses: offers, purchases paid to the model's payee, validity, transfer rules, ERC-2981 royalties."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from contracts_support import TOKEN, Deployer, advance_time, events, expect_revert, now, send
from eth_utils import keccak
from web3 import Web3
from web3.contract import Contract

NONE, ACTIVE, PAUSED, RETIRED = range(4)
ZERO = "0x" + "00" * 20
PRO = b"pro".ljust(32, b"\0")
MONTH = 30 * 24 * 3600


@dataclass
class Shop:
    w3: Web3
    licenses: Contract
    registry: Contract
    token: Contract
    owner: str  # the model's owner in the registry
    payee: str
    buyer: str
    friend: str
    stranger: str
    model: bytes

    def offer(
        self,
        *,
        price: int = 5 * TOKEN,
        duration: int = MONTH,
        supply: int = 0,
        transferable: bool = True,
        royalty: int = 500,
        model: bytes | None = None,
    ) -> int:
        fn = self.licenses.functions.createOffer(
            model or self.model, PRO, price, duration, supply, transferable, royalty
        )
        offer_id = fn.call({"from": self.owner})
        send(fn, self.owner)
        return int(offer_id)

    def buy(
        self, offer_id: int, recipient: str | None = None, buyer: str | None = None, max_price: int | None = None
    ) -> tuple[int, Any]:
        """Buy with a generous allowance, agreeing to `max_price` (default: the offer's current price)."""
        buyer = buyer or self.buyer
        send(self.token.functions.approve(self.licenses.address, 10**24), buyer)
        if max_price is None:
            max_price = self.licenses.functions.offers(offer_id).call()[2]
        fn = self.licenses.functions.buy(offer_id, recipient or buyer, max_price)
        license_id = fn.call({"from": buyer})
        return int(license_id), send(fn, buyer)

    def balance(self, who: str) -> int:
        return int(self.token.functions.balanceOf(who).call())


@pytest.fixture
def shop(w3: Web3, contracts: Any, accounts: list[str]) -> Shop:
    owner, payee = accounts[1], accounts[2]
    salt = keccak(b"licensed model")
    metadata, artifact = (0x55, keccak(b"m")), (0x55, keccak(b"a"))
    send(
        contracts.registry.functions.registerModel(salt, payee, 10**15, metadata, artifact, "https://x.example"), owner
    )
    model = contracts.registry.functions.modelIdOf(owner, salt).call()
    return Shop(w3, contracts.licenses, contracts.registry, contracts.token, owner, payee, *accounts[3:6], model)


def test_metadata_and_interfaces(shop: Shop) -> None:
    licenses = shop.licenses
    assert licenses.functions.name().call() == "Model License"
    assert licenses.functions.symbol().call() == "MLIC"
    assert licenses.functions.registry().call() == shop.registry.address
    assert licenses.functions.paymentToken().call() == shop.token.address
    for interface in ("01ffc9a7", "80ac58cd", "5b5e139f", "780e9d63", "2a55205a"):  # 165, 721, metadata, enum, 2981
        assert licenses.functions.supportsInterface(bytes.fromhex(interface)).call() is True
    assert licenses.functions.supportsInterface(bytes.fromhex("ffffffff")).call() is False


def test_the_payment_token_must_be_the_registrys(deployer: Deployer, contracts: Any) -> None:
    other = deployer.deploy("MarketToken", deployer.sender)
    with expect_revert("LicensesTokenMismatch", other.address, contracts.token.address):
        deployer.deploy("Licenses", contracts.registry.address, other.address)


# --- offers --------------------------------------------------------------------------------------------------------


def test_create_offer(shop: Shop) -> None:
    fn = shop.licenses.functions.createOffer(shop.model, PRO, 5 * TOKEN, MONTH, 100, False, 750)
    assert fn.call({"from": shop.owner}) == 1
    receipt = send(fn, shop.owner)
    assert events(shop.licenses, "OfferCreated", receipt) == [
        {
            "offerId": 1,
            "modelId": shop.model,
            "tier": PRO,
            "price": 5 * TOKEN,
            "duration": MONTH,
            "maxSupply": 100,
            "transferable": False,
            "royaltyBps": 750,
        }
    ]
    assert shop.licenses.functions.offers(1).call() == (shop.model, PRO, 5 * TOKEN, MONTH, 100, 0, False, True, 750)
    assert shop.licenses.functions.offerCount().call() == 1
    assert shop.offer() == 2


def test_create_offer_refusals(shop: Shop) -> None:
    create = shop.licenses.functions.createOffer
    with expect_revert("LicensesNotModelOwner", shop.model, shop.stranger, shop.owner):
        send(create(shop.model, PRO, 1, 0, 0, True, 0), shop.stranger)
    with expect_revert("LicensesRoyaltyTooHigh", 10_001):
        send(create(shop.model, PRO, 1, 0, 0, True, 10_001), shop.owner)
    unknown = keccak(b"unknown model")
    with expect_revert("LicensesModelNotActive", unknown, NONE):
        send(create(unknown, PRO, 1, 0, 0, True, 0), shop.owner)
    send(shop.registry.functions.setPaused(shop.model, True), shop.owner)
    shop.offer()  # offers may be prepared while the model is paused
    send(shop.registry.functions.retire(shop.model), shop.owner)
    with expect_revert("LicensesModelNotActive", shop.model, RETIRED):
        send(create(shop.model, PRO, 1, 0, 0, True, 0), shop.owner)


def test_update_offers(shop: Shop, accounts: list[str]) -> None:
    offer_id = shop.offer(price=5 * TOKEN)
    receipt = send(shop.licenses.functions.setOfferActive(offer_id, False), shop.owner)
    assert events(shop.licenses, "OfferUpdated", receipt) == [
        {"offerId": offer_id, "price": 5 * TOKEN, "active": False}
    ]
    with expect_revert("LicensesActiveUnchanged", offer_id, False):
        send(shop.licenses.functions.setOfferActive(offer_id, False), shop.owner)
    receipt = send(shop.licenses.functions.setOfferPrice(offer_id, 7 * TOKEN), shop.owner)
    assert events(shop.licenses, "OfferUpdated", receipt) == [
        {"offerId": offer_id, "price": 7 * TOKEN, "active": False}
    ]
    assert shop.licenses.functions.offers(offer_id).call()[2] == 7 * TOKEN
    with expect_revert("LicensesNotModelOwner", shop.model, shop.stranger, shop.owner):
        send(shop.licenses.functions.setOfferActive(offer_id, True), shop.stranger)
    with expect_revert("LicensesNotModelOwner", shop.model, shop.stranger, shop.owner):
        send(shop.licenses.functions.setOfferPrice(offer_id, 1), shop.stranger)
    with expect_revert("LicensesUnknownOffer", 99):
        send(shop.licenses.functions.setOfferActive(99, True), shop.owner)
    # Offers follow the model: its new owner controls them, the old one no longer does.
    send(shop.registry.functions.transferModel(shop.model, accounts[7]), shop.owner)
    with expect_revert("LicensesNotModelOwner", shop.model, shop.owner, accounts[7]):
        send(shop.licenses.functions.setOfferActive(offer_id, True), shop.owner)
    send(shop.licenses.functions.setOfferActive(offer_id, True), accounts[7])


# --- buying --------------------------------------------------------------------------------------------------------


def test_buy_pays_the_payee_and_mints_to_the_recipient(shop: Shop) -> None:
    offer_id = shop.offer(price=5 * TOKEN, duration=MONTH)
    buyer_before, payee_before = shop.balance(shop.buyer), shop.balance(shop.payee)

    license_id, receipt = shop.buy(offer_id, recipient=shop.friend)

    bought_at = shop.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert license_id == 1
    assert events(shop.licenses, "LicensePurchased", receipt) == [
        {
            "licenseId": 1,
            "offerId": offer_id,
            "modelId": shop.model,
            "buyer": shop.buyer,
            "recipient": shop.friend,
            "price": 5 * TOKEN,
            "expiresAt": bought_at + MONTH,
        }
    ]
    assert shop.balance(shop.buyer) == buyer_before - 5 * TOKEN
    assert shop.balance(shop.payee) == payee_before + 5 * TOKEN
    assert shop.licenses.functions.ownerOf(license_id).call() == shop.friend
    assert shop.licenses.functions.licenseOf(license_id).call() == (offer_id, shop.model, bought_at + MONTH, True)
    assert shop.licenses.functions.offers(offer_id).call()[5] == 1  # sold
    assert shop.licenses.functions.isValid(license_id).call() is True


def test_perpetual_and_free_licenses(shop: Shop) -> None:
    offer_id = shop.offer(price=0, duration=0)
    buyer_before = shop.balance(shop.buyer)
    license_id, receipt = shop.buy(offer_id)
    assert events(shop.token, "Transfer", receipt) == []
    assert shop.balance(shop.buyer) == buyer_before
    assert shop.licenses.functions.licenseOf(license_id).call()[2] == 0
    advance_time(shop.w3, 100 * 365 * 24 * 3600)
    assert shop.licenses.functions.isValid(license_id).call() is True


def test_buy_follows_the_current_payee(shop: Shop, accounts: list[str]) -> None:
    offer_id = shop.offer(price=TOKEN)
    send(shop.registry.functions.setPayee(shop.model, accounts[8]), shop.owner)
    before = shop.balance(accounts[8])
    shop.buy(offer_id)
    assert shop.balance(accounts[8]) == before + TOKEN


def test_a_price_raised_before_the_buy_reverts_with_both_prices(shop: Shop) -> None:
    """The seller front-runs a buyer who agreed to 5 MKT (and approved far more) with a raise to 50."""
    offer_id = shop.offer(price=5 * TOKEN)
    send(shop.licenses.functions.setOfferPrice(offer_id, 50 * TOKEN), shop.owner)
    buyer_before, payee_before = shop.balance(shop.buyer), shop.balance(shop.payee)

    with expect_revert("LicensesPriceAboveMax", offer_id, 50 * TOKEN, 5 * TOKEN):
        shop.buy(offer_id, max_price=5 * TOKEN)

    assert (shop.balance(shop.buyer), shop.balance(shop.payee)) == (buyer_before, payee_before)
    assert shop.licenses.functions.balanceOf(shop.buyer).call() == 0
    assert shop.licenses.functions.offers(offer_id).call()[5] == 0  # nothing sold


def test_a_price_at_or_under_the_maximum_is_charged_as_listed(shop: Shop) -> None:
    offer_id = shop.offer(price=5 * TOKEN)
    before = shop.balance(shop.buyer)
    shop.buy(offer_id, max_price=5 * TOKEN)  # exactly the agreed price
    assert shop.balance(shop.buyer) == before - 5 * TOKEN
    send(shop.licenses.functions.setOfferPrice(offer_id, 2 * TOKEN), shop.owner)
    _, receipt = shop.buy(offer_id, max_price=5 * TOKEN)  # a price cut in the meantime: the buyer pays less
    assert events(shop.licenses, "LicensePurchased", receipt)[0]["price"] == 2 * TOKEN
    assert shop.balance(shop.buyer) == before - 7 * TOKEN


def test_buy_refusals(shop: Shop) -> None:
    with expect_revert("LicensesUnknownOffer", 42):
        shop.buy(42)
    limited = shop.offer(supply=1)
    shop.buy(limited)
    with expect_revert("LicensesSoldOut", limited, 1):
        shop.buy(limited)
    offer_id = shop.offer()
    with expect_revert("ERC721InvalidReceiver", ZERO):
        shop.buy(offer_id, recipient=ZERO)
    with expect_revert("ERC20InsufficientAllowance", shop.licenses.address, 0, 5 * TOKEN):
        send(shop.licenses.functions.buy(offer_id, shop.stranger, 5 * TOKEN), shop.stranger)
    send(shop.licenses.functions.setOfferActive(offer_id, False), shop.owner)
    with expect_revert("LicensesOfferInactive", offer_id):
        shop.buy(offer_id)
    send(shop.licenses.functions.setOfferActive(offer_id, True), shop.owner)
    send(shop.registry.functions.setPaused(shop.model, True), shop.owner)
    with expect_revert("LicensesModelNotActive", shop.model, PAUSED):
        shop.buy(offer_id)
    send(shop.registry.functions.retire(shop.model), shop.owner)
    with expect_revert("LicensesModelNotActive", shop.model, RETIRED):
        shop.buy(offer_id)


# --- validity ------------------------------------------------------------------------------------------------------


def test_validity_ends_with_expiry_or_retirement_not_with_a_pause(shop: Shop) -> None:
    short, long = shop.offer(duration=3600), shop.offer(duration=MONTH)
    expiring, _ = shop.buy(short)
    lasting, _ = shop.buy(long)
    assert shop.licenses.functions.validLicenseOf(shop.buyer, shop.model).call() == expiring
    advance_time(shop.w3, 3600)
    assert shop.licenses.functions.isValid(expiring).call() is False
    assert shop.licenses.functions.validLicenseOf(shop.buyer, shop.model).call() == lasting
    send(shop.registry.functions.setPaused(shop.model, True), shop.owner)
    assert shop.licenses.functions.isValid(lasting).call() is True
    send(shop.registry.functions.retire(shop.model), shop.owner)
    assert shop.licenses.functions.isValid(lasting).call() is False
    assert shop.licenses.functions.validLicenseOf(shop.buyer, shop.model).call() == 0


def test_valid_license_of_matches_the_model_and_holder(shop: Shop) -> None:
    other_salt = keccak(b"other model")
    send(
        shop.registry.functions.registerModel(
            other_salt, shop.payee, 1, (0x55, keccak(b"m2")), (0x55, keccak(b"a2")), ""
        ),
        shop.owner,
    )
    other_model = shop.registry.functions.modelIdOf(shop.owner, other_salt).call()
    for_other, _ = shop.buy(shop.offer(model=other_model))
    assert shop.licenses.functions.validLicenseOf(shop.buyer, shop.model).call() == 0
    assert shop.licenses.functions.validLicenseOf(shop.buyer, other_model).call() == for_other
    assert shop.licenses.functions.validLicenseOf(shop.stranger, other_model).call() == 0
    assert shop.licenses.functions.isValid(999).call() is False
    with expect_revert("ERC721NonexistentToken", 999):
        shop.licenses.functions.licenseOf(999).call()


# --- transfers, burning, royalties ---------------------------------------------------------------------------------


def test_a_non_transferable_license_can_only_be_burned(shop: Shop) -> None:
    license_id, _ = shop.buy(shop.offer(transferable=False))
    licenses = shop.licenses.functions
    with expect_revert("LicensesNonTransferable", license_id):
        send(licenses.transferFrom(shop.buyer, shop.friend, license_id), shop.buyer)
    with expect_revert("LicensesNonTransferable", license_id):
        send(licenses.safeTransferFrom(shop.buyer, shop.friend, license_id), shop.buyer)
    with expect_revert("ERC721InsufficientApproval", shop.stranger, license_id):
        send(licenses.burn(license_id), shop.stranger)
    send(licenses.burn(license_id), shop.buyer)
    assert licenses.isValid(license_id).call() is False
    assert licenses.balanceOf(shop.buyer).call() == 0


def test_a_transferable_license_moves_with_its_validity(shop: Shop) -> None:
    license_id, _ = shop.buy(shop.offer(transferable=True))
    send(shop.licenses.functions.transferFrom(shop.buyer, shop.friend, license_id), shop.buyer)
    assert shop.licenses.functions.validLicenseOf(shop.buyer, shop.model).call() == 0
    assert shop.licenses.functions.validLicenseOf(shop.friend, shop.model).call() == license_id


def test_royalties_go_to_the_current_payee(shop: Shop, accounts: list[str]) -> None:
    license_id, _ = shop.buy(shop.offer(royalty=750))
    assert shop.licenses.functions.royaltyInfo(license_id, 10 * TOKEN).call() == [shop.payee, 75 * TOKEN // 100]
    send(shop.registry.functions.setPayee(shop.model, accounts[8]), shop.owner)
    assert shop.licenses.functions.royaltyInfo(license_id, 10_000).call() == [accounts[8], 750]
    with expect_revert("ERC721NonexistentToken", 999):
        shop.licenses.functions.royaltyInfo(999, 1).call()


def test_license_purchases_are_stamped_with_the_block_time(shop: Shop) -> None:
    offer_id = shop.offer(duration=1000)
    license_id, receipt = shop.buy(offer_id)
    block_time = shop.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert shop.licenses.functions.licenseOf(license_id).call()[2] == block_time + 1000
    assert block_time <= now(shop.w3)
