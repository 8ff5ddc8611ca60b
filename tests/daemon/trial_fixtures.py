"""A daemon serving two models with free trials: TOKEN_CALLS per consumer behind a provider's
token (`listing`), OPEN_CALLS to anyone (`open_model`, no token required); helpers to sign trials."""

from __future__ import annotations

import json
from typing import Any

import httpx
from daemon_fixtures import Listing, pay_header, register_model
from eth_account.signers.local import LocalAccount
from web3 import Web3

from marketplace.ipfs import PROFILES
from marketplace.ipfs.artifacts import add_bytes, add_path, open_store
from marketplace.metadata import ModelMetadata
from marketplace.payments.schemes.trial import TrialToken, sign_trial_request, trial_domain
from marketplace.payments.x402 import PaymentRequirements

BODY = json.dumps({"inputs": [[5.9, 3.0, 5.1, 1.8]]}).encode()
BAD_BODY = b'{"inputs": [[1, 2, 3]]}'  # three features: the model refuses it (422)
TOKEN_CALLS, OPEN_CALLS = 3, 2


def relist(w3: Web3, contracts: Any, listing: Listing) -> bytes:
    """A second model of `listing`'s provider with the same artifact and metadata (already in its store)."""
    with open_store("local", data_dir=listing.data_dir / "ipfs") as store:
        artifact = add_path(store, listing.spec.path, PROFILES["kubo-v1"]).cid
        metadata = ModelMetadata.model_validate(listing.spec.metadata())
        meta_cid = add_bytes(store, metadata.to_json_bytes(), PROFILES["kubo-v1"]).cid
    return register_model(w3, contracts.registry, listing.provider, metadata=(meta_cid.codec, meta_cid.digest),
                          artifact=(artifact.codec, artifact.digest))


def trial_models(listing: Listing, open_model: bytes) -> list[dict[str, Any]]:
    """The `models` setting: trials behind a token on `listing`, open trials on `open_model`."""
    return [{"model_id": listing.model_hex, "trial_calls": TOKEN_CALLS},
            {"model_id": "0x" + open_model.hex(), "trial_calls": OPEN_CALLS, "trial_token_required": False}]


def chain_now(w3: Web3) -> int:
    return int(w3.eth.get_block("latest")["timestamp"])


def token_for(w3: Web3, contracts: Any, issuer: LocalAccount, consumer: str, model_id: bytes, *,
              calls: int = TOKEN_CALLS, expiry: int | None = None) -> TrialToken:
    domain = trial_domain(w3.eth.chain_id, contracts.registry.address)
    return TrialToken.sign(issuer, domain, consumer, model_id, calls, expiry if expiry is not None else chain_now(w3)
                           + 86_400)


def trial_header(w3: Web3, contracts: Any, requirements: PaymentRequirements, consumer: LocalAccount,
                 model_id: bytes, *, token: TrialToken | None = None, body: bytes = BODY) -> str:
    """A PAYMENT-SIGNATURE spending one trial of `model_id` on POST its infer path with `body`."""
    payload = sign_trial_request(consumer, trial_domain(w3.eth.chain_id, contracts.registry.address),
                                 model_id=model_id, method="POST", path=f"/v1/models/0x{model_id.hex()}/infer",
                                 body=body, deadline=chain_now(w3) + 120, token=token)
    return pay_header(requirements, payload)


async def ask(client: httpx.AsyncClient, model_id: bytes, header: str | None = None, *, body: bytes = BODY,
              **headers: str) -> httpx.Response:
    sent = {"content-type": "application/json", **headers} | ({"PAYMENT-SIGNATURE": header} if header else {})
    return await client.post(f"/v1/models/0x{model_id.hex()}/infer", content=body, headers=sent)
