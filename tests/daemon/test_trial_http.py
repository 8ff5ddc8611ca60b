"""`trial` over HTTP on a live daemon: N free calls per consumer and model, no more, whatever the
consumer (or a stranger) sends: replays, other people's tokens, forged or expired tokens, fresh
keys (sybils), concurrent calls; a failed run gives the trial back."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from daemon_fixtures import Listing, pay_header, requirements_of, running_daemon
from eth_account import Account
from eth_account.signers.local import LocalAccount
from trial_fixtures import (
    BAD_BODY,
    OPEN_CALLS,
    TOKEN_CALLS,
    ask,
    relist,
    token_for,
    trial_header,
    trial_models,
)
from web3 import Web3

from marketplace.daemon.settings import DaemonSettings, ServedModel
from marketplace.payments.receipts import verify_receipt
from marketplace.payments.x402 import parse_payment_required, parse_payment_response, parse_payment_signature
from marketplace.types import TokenPricing

pytestmark = pytest.mark.anyio
PER_TOKEN = TokenPricing(per_call=1_000, per_input_token=10, per_output_token=100)


@pytest.fixture(scope="module")
def open_model(w3: Web3, contracts: Any, listing: Listing) -> bytes:
    return relist(w3, contracts, listing)


@pytest.fixture(scope="module")
async def trial_daemon(settings: DaemonSettings, listing: Listing, open_model: bytes
                       ) -> AsyncIterator[httpx.AsyncClient]:
    models = [ServedModel(**model) for model in trial_models(listing, open_model)]
    async with running_daemon(settings.model_copy(update={"models": models})) as client:
        yield client


async def offer(client: httpx.AsyncClient, model_id: bytes, **headers: str) -> Any:
    offered = await ask(client, model_id, **headers)
    assert offered.status_code == 402
    return requirements_of(offered, "trial")


async def test_the_402_offers_trials_only_for_models_that_have_them(
    trial_daemon: httpx.AsyncClient, listing: Listing, open_model: bytes, w3: Web3, contracts: Any,
    settings: DaemonSettings,
) -> None:
    requirements = await offer(trial_daemon, listing.model_id)
    assert (requirements.amount, requirements.extra["calls"], requirements.extra["tokenRequired"]) == (
        0, TOKEN_CALLS, True)
    assert requirements.extra["registry"] == contracts.registry.address
    assert requirements.extra["token"]["primaryType"] == "TrialToken"
    open_offer = await offer(trial_daemon, open_model)
    assert (open_offer.extra["calls"], open_offer.extra["tokenRequired"]) == (OPEN_CALLS, False)
    assert "used" not in open_offer.extra
    garbled = await ask(trial_daemon, open_model, **{"PAYMENT-CONSUMER": "0x12"})
    assert (garbled.status_code, garbled.json()["error"]) == (400, "invalid_payload")
    async with running_daemon(settings) as plain:  # no trial_calls: no trial offered, none admitted
        refused = await ask(plain, listing.model_id)
        assert "trial" not in [r.scheme for r in parse_payment_required(refused.headers["PAYMENT-REQUIRED"]).accepts]
        consumer = Account.create()
        token = token_for(w3, contracts, listing.provider, consumer.address, listing.model_id)
        sneaked = await ask(plain, listing.model_id, trial_header(w3, contracts, requirements, consumer,
                                                                  listing.model_id, token=token))
        assert (sneaked.status_code, sneaked.json()["error"]) == (402, "unsupported_scheme")


async def test_a_model_priced_per_token_offers_and_admits_no_trial(
    trial_daemon: httpx.AsyncClient, listing: Listing, w3: Web3, contracts: Any
) -> None:
    consumer = Account.create()
    requirements = await offer(trial_daemon, listing.model_id)
    token = token_for(w3, contracts, listing.provider, consumer.address, listing.model_id)
    state = trial_daemon.app.state.services.state  # type: ignore[attr-defined]
    flat = state.model(listing.model_id)
    state._models[listing.model_id] = dataclasses.replace(flat, token_pricing=PER_TOKEN)  # repriced per token
    try:
        refused = await ask(trial_daemon, listing.model_id,
                            trial_header(w3, contracts, requirements, consumer, listing.model_id, token=token))
        assert (refused.status_code, refused.json()["error"]) == (402, "unsupported_scheme")
        assert [r.scheme for r in parse_payment_required(refused.headers["PAYMENT-REQUIRED"]).accepts] == ["metered"]
    finally:
        state._models[listing.model_id] = flat
    hinted = await offer(trial_daemon, listing.model_id, **{"PAYMENT-CONSUMER": consumer.address})
    assert hinted.extra["used"] == 0  # nothing was counted


async def test_a_token_holder_gets_exactly_n_free_calls_then_pays(
    trial_daemon: httpx.AsyncClient, listing: Listing, w3: Web3, contracts: Any
) -> None:
    consumer = Account.create()  # no tokens, no ether: trials cost nothing
    requirements = await offer(trial_daemon, listing.model_id)
    token = token_for(w3, contracts, listing.provider, consumer.address, listing.model_id)
    for call in range(1, TOKEN_CALLS + 1):
        served = await ask(trial_daemon, listing.model_id,
                           trial_header(w3, contracts, requirements, consumer, listing.model_id, token=token))
        assert served.status_code == 200, served.text
        paid = parse_payment_response(served.headers["PAYMENT-RESPONSE"])
        assert (paid.amount, paid.payer, paid.extra["trial"]) == (0, consumer.address,
                                                                 {"call": call, "calls": TOKEN_CALLS})
        receipt = paid.extra["receipt"]
        assert (receipt["message"]["scheme"], receipt["message"]["amount"]) == ("trial", "0")
        assert verify_receipt(receipt) == listing.provider.address
    refused = await ask(trial_daemon, listing.model_id,
                        trial_header(w3, contracts, requirements, consumer, listing.model_id, token=token))
    assert (refused.status_code, refused.json()["error"]) == (402, "trial_exhausted")
    schemes = [r.scheme for r in parse_payment_required(refused.headers["PAYMENT-REQUIRED"]).accepts]
    assert schemes == ["channel", "exact", "license", "trial"]  # the paid schemes are offered next
    hinted = await offer(trial_daemon, listing.model_id, **{"PAYMENT-CONSUMER": consumer.address})
    assert hinted.extra["used"] == TOKEN_CALLS


async def test_a_token_for_more_calls_than_a_counter_holds_is_served(
    trial_daemon: httpx.AsyncClient, listing: Listing, w3: Web3, contracts: Any
) -> None:
    consumer = Account.create()
    requirements = await offer(trial_daemon, listing.model_id)
    token = token_for(w3, contracts, listing.provider, consumer.address, listing.model_id, calls=2**256 - 1)
    served = await ask(trial_daemon, listing.model_id,
                       trial_header(w3, contracts, requirements, consumer, listing.model_id, token=token))
    assert served.status_code == 200, served.text


async def test_a_replayed_trial_request_is_refused(
    trial_daemon: httpx.AsyncClient, listing: Listing, w3: Web3, contracts: Any
) -> None:
    consumer = Account.create()
    requirements = await offer(trial_daemon, listing.model_id)
    token = token_for(w3, contracts, listing.provider, consumer.address, listing.model_id)
    header = trial_header(w3, contracts, requirements, consumer, listing.model_id, token=token)
    assert (await ask(trial_daemon, listing.model_id, header)).status_code == 200
    replayed = await ask(trial_daemon, listing.model_id, header)
    assert (replayed.status_code, replayed.json()["error"]) == (402, "trial_replayed")
    hinted = await offer(trial_daemon, listing.model_id, **{"PAYMENT-CONSUMER": consumer.address})
    assert hinted.extra["used"] == 1  # the replay spent none of the consumer's trials


@pytest.mark.parametrize("case", ["another consumer's token", "a token for another model", "an expired token",
                                  "a token signed by a stranger", "no token (a sybil's fresh key)"])
async def test_a_trial_without_a_valid_token_of_ones_own_is_refused(
    case: str, trial_daemon: httpx.AsyncClient, listing: Listing, open_model: bytes, w3: Web3, contracts: Any,
    dev_accounts: list[LocalAccount],
) -> None:
    consumer, victim = Account.create(), Account.create()
    requirements = await offer(trial_daemon, listing.model_id)
    provider, model = listing.provider, listing.model_id
    token, expected = {
        "another consumer's token": (token_for(w3, contracts, provider, victim.address, model), "trial_token_invalid"),
        "a token for another model": (token_for(w3, contracts, provider, consumer.address, open_model),
                                      "trial_token_invalid"),
        "an expired token": (token_for(w3, contracts, provider, consumer.address, model, expiry=1),
                             "trial_token_expired"),
        "a token signed by a stranger": (token_for(w3, contracts, dev_accounts[6], consumer.address, model, calls=99),
                                         "trial_token_invalid"),
        "no token (a sybil's fresh key)": (None, "trial_token_required"),
    }[case]
    refused = await ask(trial_daemon, model, trial_header(w3, contracts, requirements, consumer, model, token=token))
    assert (refused.status_code, refused.json()["error"]) == (402, expected)


async def test_a_trial_request_names_one_request_and_one_signer(
    trial_daemon: httpx.AsyncClient, listing: Listing, open_model: bytes, w3: Web3, contracts: Any
) -> None:
    consumer = Account.create()
    requirements = await offer(trial_daemon, open_model)
    header = trial_header(w3, contracts, requirements, consumer, open_model)
    other_body = await ask(trial_daemon, open_model, header, body=b'{"inputs": [[1.0, 1.0, 1.0, 1.0]]}')
    assert (other_body.status_code, other_body.json()["error"]) == (402, "request_mismatch")
    other_model = await ask(trial_daemon, listing.model_id, header)  # signed for open_model's path
    assert (other_model.status_code, other_model.json()["error"]) == (402, "request_mismatch")
    payload = dict(parse_payment_signature(header, schemes=frozenset({"trial"})).payload)
    payload["consumer"] = Account.create().address  # claims to be someone else: does not recover to them
    forged = await ask(trial_daemon, open_model, pay_header(requirements, payload))
    assert (forged.status_code, forged.json()["error"]) == (402, "bad_signature")


async def test_open_trials_need_no_token_and_a_failed_run_gives_the_trial_back(
    trial_daemon: httpx.AsyncClient, open_model: bytes, w3: Web3, contracts: Any
) -> None:
    consumer = Account.create()
    requirements = await offer(trial_daemon, open_model)
    failed = await ask(trial_daemon, open_model, trial_header(w3, contracts, requirements, consumer, open_model,
                                                              body=BAD_BODY), body=BAD_BODY)
    assert (failed.status_code, failed.json()["error"]) == (422, "invalid_input")
    hinted = await offer(trial_daemon, open_model, **{"PAYMENT-CONSUMER": consumer.address})
    assert hinted.extra["used"] == 0
    served = [await ask(trial_daemon, open_model, trial_header(w3, contracts, requirements, consumer, open_model))
              for _ in range(OPEN_CALLS + 1)]
    assert [r.status_code for r in served] == [200] * OPEN_CALLS + [402]


async def test_concurrent_trials_of_one_consumer_are_served_exactly_n_times(
    trial_daemon: httpx.AsyncClient, listing: Listing, w3: Web3, contracts: Any
) -> None:
    consumer = Account.create()
    requirements = await offer(trial_daemon, listing.model_id)
    token = token_for(w3, contracts, listing.provider, consumer.address, listing.model_id)
    headers = [trial_header(w3, contracts, requirements, consumer, listing.model_id, token=token) for _ in range(20)]
    outcomes: Counter[tuple[int, str | None]] = Counter()

    async def call(header: str) -> None:
        response = await ask(trial_daemon, listing.model_id, header)
        outcomes[(response.status_code, response.json().get("error") if response.status_code != 200 else None)] += 1

    async with anyio.create_task_group() as calls:
        for header in headers:
            calls.start_soon(call, header)
    assert outcomes == {(200, None): TOKEN_CALLS, (402, "trial_exhausted"): 20 - TOKEN_CALLS}
