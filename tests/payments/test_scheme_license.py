"""The `license` scheme on a real chain: license holders are served free; every cheat has its code."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from scheme_fixtures import PRICE, TOKENS, DeployedChainState, chain_time, ethers_sign, mint, paid, register_model, run
from web3 import Web3

from marketplace.chain.transactions import Sender
from marketplace.chain.views import ModelInfo
from marketplace.daemon.errors import status_for
from marketplace.payments.eip712 import LICENSE_ACCESS
from marketplace.payments.errors import PaymentRejected
from marketplace.payments.receipts import body_hash
from marketplace.payments.schemes import LicenseScheme, PaidRequest, VerifiedLicense
from marketplace.payments.schemes.license import LicenseAccess, license_access_digest, sign_license_access

BODY = json.dumps({"inputs": [[1.0, 2.0, 3.0]]}).encode()
PATH = "/v1/models/0xaa/infer"
LICENSE_PRICE = 5 * TOKENS


@dataclass
class Setup:
    w3: Web3
    contracts: Any
    scheme: LicenseScheme
    owner: LocalAccount
    holder: LocalAccount
    other: LocalAccount
    model: ModelInfo
    model_b: ModelInfo

    def buy(
        self, model: ModelInfo, *, duration: int = 0, transferable: bool = True, buyer: LocalAccount | None = None
    ) -> int:
        licenses = self.contracts.licenses
        Sender(self.w3, self.owner).transact(
            licenses.functions.createOffer(
                model.model_id, b"pro".ljust(32, b"\0"), LICENSE_PRICE, duration, 0, transferable, 500
            )
        )
        offer_id = licenses.functions.offerCount().call()
        buyer = buyer or self.holder
        sender = Sender(self.w3, buyer)
        sender.transact(self.contracts.token.functions.approve(licenses.address, LICENSE_PRICE))
        sender.transact(licenses.functions.buy(offer_id, buyer.address, LICENSE_PRICE))
        return int(licenses.functions.totalSupply().call())  # ids count from 1; the newest is the total

    def payload(
        self,
        license_id: int,
        *,
        signer: LocalAccount | None = None,
        model: ModelInfo | None = None,
        body: bytes = BODY,
        method: str = "POST",
        path: str = PATH,
        deadline: int | None = None,
    ) -> dict[str, str]:
        return sign_license_access(
            signer or self.holder,
            chain_id=31337,
            licenses=self.scheme.licenses,
            license_id=license_id,
            model_id=(model or self.model).model_id,
            method=method,
            path=path,
            body=body,
            deadline=chain_time(self.w3) + 120 if deadline is None else deadline,
        )

    def verify(
        self,
        payload: dict[str, str],
        *,
        model: ModelInfo | None = None,
        body: bytes = BODY,
        method: str = "POST",
        path: str = PATH,
    ) -> VerifiedLicense:
        model = model or self.model
        request = PaidRequest(model, body, method, path)
        return run(self.scheme.verify(paid(self.scheme.requirements(model), payload), request))

    def code_of(self, payload: dict[str, str], **kwargs: Any) -> str:
        with pytest.raises(PaymentRejected) as caught:
            self.verify(payload, **kwargs)
        assert status_for(caught.value) == 402
        return caught.value.code

    def advance(self, seconds: int) -> None:
        self.w3.provider.make_request("evm_increaseTime", [seconds])
        self.w3.provider.make_request("evm_mine", [])


@pytest.fixture
def setup(w3, contracts, dev_accounts, snapshot) -> Setup:
    owner, holder, other, payee = dev_accounts[0], dev_accounts[2], dev_accounts[6], dev_accounts[5]
    for account in (holder, other):
        mint(contracts, w3, owner, account.address, 100 * TOKENS)
    state = DeployedChainState(w3, contracts)
    scheme = LicenseScheme(state, w3)
    model = register_model(contracts, w3, owner, payee=payee.address)
    model_b = register_model(contracts, w3, owner, payee=payee.address)
    return Setup(w3, contracts, scheme, owner, holder, other, model, model_b)


def test_the_holder_is_served(setup: Setup) -> None:
    license_id = setup.buy(setup.model)
    verified = setup.verify(setup.payload(license_id))
    assert (verified.license_id, verified.holder, verified.model_id) == (
        license_id,
        setup.holder.address,
        setup.model.model_id,
    )
    response = setup.scheme.response(verified, receipt={"r": 1}).to_json()
    assert response["amount"] == "0" and response["payer"] == setup.holder.address
    assert response["extra"] == {
        "scheme": "license",
        "receipt": {"r": 1},
        "license": {"licenseId": str(license_id), "expiresAt": 0},
    }
    requirements = setup.scheme.requirements(setup.model)
    assert requirements.amount == 0 and requirements.extra["requestHash"] == "sha256"
    assert requirements.extra["access"]["domain"]["verifyingContract"] == setup.contracts.addresses["Licenses"]


def test_an_access_message_signed_by_ethers(setup: Setup) -> None:
    license_id = setup.buy(setup.model)
    deadline, nonce = chain_time(setup.w3) + 60, 2**255 + 7
    access = setup.scheme.requirements(setup.model).extra["access"]
    assert access["type"] == LICENSE_ACCESS.type_string
    request_hash = body_hash(BODY)
    typed = {
        "domain": access["domain"],
        "types": access["types"],
        "primaryType": "LicenseAccess",
        "message": {
            "licenseId": license_id,
            "modelId": "0x" + setup.model.model_id.hex(),
            "method": "POST",
            "path": PATH,
            "requestHash": "0x" + request_hash.hex(),
            "nonce": nonce,
            "deadline": deadline,
        },
    }
    signature, digest = ethers_sign(setup.holder, typed)
    assert digest == license_access_digest(
        31337,
        setup.scheme.licenses,
        LicenseAccess(license_id, setup.model.model_id, "POST", PATH, request_hash, nonce, deadline),
    )
    payload = {
        "licenseId": str(license_id),
        "nonce": str(nonce),
        "deadline": str(deadline),
        "method": "POST",
        "path": PATH,
        "requestHash": "0x" + request_hash.hex(),
        "signature": "0x" + signature.hex(),
    }
    verified = setup.verify(payload)
    assert (verified.holder, verified.nonce, verified.deadline) == (setup.holder.address, nonce, deadline)


def test_license_of_another_model(setup: Setup) -> None:
    license_b = setup.buy(setup.model_b)
    assert setup.code_of(setup.payload(license_b)) == "license_wrong_model"


def test_expired_license(setup: Setup) -> None:
    license_id = setup.buy(setup.model, duration=3600)
    assert setup.verify(setup.payload(license_id)).expires_at > 0
    setup.advance(3601)
    assert setup.code_of(setup.payload(license_id)) == "license_expired"  # even from the cache


def test_transferred_license(setup: Setup) -> None:
    setup.scheme.refresh_interval = 0  # the cached owner is re-read at once (default: at most every 2 s)
    license_id = setup.buy(setup.model)
    setup.verify(setup.payload(license_id))  # cached: holder owns it
    Sender(setup.w3, setup.holder).transact(
        setup.contracts.licenses.functions.transferFrom(setup.holder.address, setup.other.address, license_id)
    )
    assert setup.verify(setup.payload(license_id, signer=setup.other)).holder == setup.other.address  # re-read once
    assert setup.code_of(setup.payload(license_id)) == "not_license_holder"


def test_transfer_seen_through_invalidate(setup: Setup) -> None:
    license_id = setup.buy(setup.model)
    setup.verify(setup.payload(license_id))
    Sender(setup.w3, setup.holder).transact(
        setup.contracts.licenses.functions.transferFrom(setup.holder.address, setup.other.address, license_id)
    )
    setup.scheme.invalidate(license_id)  # what the daemon does on the Transfer event
    assert setup.code_of(setup.payload(license_id)) == "not_license_holder"


def test_someone_else_signing(setup: Setup) -> None:
    license_id = setup.buy(setup.model)
    assert setup.code_of(setup.payload(license_id, signer=setup.other)) == "not_license_holder"


def test_a_signature_for_another_model_does_not_open_this_one(setup: Setup) -> None:
    license_id = setup.buy(setup.model)
    assert setup.code_of(setup.payload(license_id, model=setup.model_b)) == "not_license_holder"


def test_no_such_license_and_retired_model(setup: Setup) -> None:
    assert setup.code_of(setup.payload(987_654)) == "license_invalid"
    license_id = setup.buy(setup.model)
    setup.verify(setup.payload(license_id))
    Sender(setup.w3, setup.owner).transact(setup.contracts.registry.functions.retire(setup.model.model_id))
    setup.scheme.invalidate(license_id)  # cached as valid for up to cache_ttl; the daemon invalidates on events
    assert setup.code_of(setup.payload(license_id)) == "license_invalid"


def test_deadline_and_request_binding(setup: Setup) -> None:
    license_id = setup.buy(setup.model)
    now = chain_time(setup.w3)
    assert setup.code_of(setup.payload(license_id, deadline=now)) == "access_expired"
    assert setup.code_of(setup.payload(license_id, deadline=now - 10)) == "access_expired"
    assert setup.code_of(setup.payload(license_id, deadline=now + 301)) == "access_window_too_long"
    assert setup.code_of(setup.payload(license_id), body=BODY + b" ") == "request_mismatch"
    assert setup.code_of(setup.payload(license_id, body=b"{}")) == "request_mismatch"
    # Signed for POST <PATH>: refused on another path or with another method.
    assert setup.code_of(setup.payload(license_id), path="/v1/models/0xaa/infer/stream") == "request_mismatch"
    assert setup.code_of(setup.payload(license_id), method="PUT") == "request_mismatch"
    for field, value in (("deadline", None), ("nonce", None), ("path", "/v1/models/0xbb/infer"), ("method", "PUT")):
        tampered = setup.payload(license_id)
        tampered[field] = str(int(tampered[field]) + 1) if value is None else value
        path, method = tampered["path"], tampered["method"]  # the request matches the tampered claim...
        assert setup.code_of(tampered, path=path, method=method) == "not_license_holder"  # ...not the signature


def test_each_access_message_carries_a_fresh_nonce(setup: Setup) -> None:
    license_id = setup.buy(setup.model)
    nonces = {setup.verify(setup.payload(license_id)).nonce for _ in range(3)}
    assert len(nonces) == 3 and all(0 <= n < 2**256 for n in nonces)


def test_the_license_cache_saves_rpc(setup: Setup) -> None:
    license_id = setup.buy(setup.model)
    calls = []
    original = setup.scheme._read

    async def counting(license_id: int):
        calls.append(license_id)
        return await original(license_id)

    setup.scheme._read = counting  # type: ignore[method-assign]
    for _ in range(3):
        setup.verify(setup.payload(license_id))
    assert calls == [license_id]
    for _ in range(3):  # strangers' signatures do not turn into RPC calls (throttled re-reads)
        assert setup.code_of(setup.payload(license_id, signer=setup.other)) == "not_license_holder"
        assert setup.code_of(setup.payload(424_242)) == "license_invalid"
    assert calls == [license_id, 424_242]
    setup.scheme.invalidate()
    setup.verify(setup.payload(license_id))
    assert calls == [license_id, 424_242, license_id]
    assert PRICE  # the model's per-call price is irrelevant here: licensed calls are free
