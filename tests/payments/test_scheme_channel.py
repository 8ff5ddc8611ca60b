"""The `channel` scheme: every cheating attempt is refused with its exact code; no RPC on the hot path."""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace

import pytest
from scheme_fixtures import (
    CHAIN_ID,
    ESCROW,
    MODEL_A,
    MODEL_B,
    PRICE,
    TOKENS,
    DeployedChainState,
    FakeChainState,
    make_channel,
    make_model,
    mint,
    paid,
    register_model,
    run,
)

from marketplace.chain.devkeys import dev_account
from marketplace.chain.transactions import Sender
from marketplace.daemon.errors import status_for
from marketplace.payments.errors import PaymentRejected
from marketplace.payments.schemes import ChannelScheme, PaidRequest, VerifiedVoucher
from marketplace.payments.schemes.channel import parse_channel_hint, voucher_payload
from marketplace.payments.vouchers import VoucherDomain, sign_voucher
from marketplace.payments.x402 import PaymentPayload, PaymentRequirements, parse_payment_response

NOW = 1_800_000_000
PAYER, SIGNER, PAYEE, OTHER = dev_account(2), dev_account(3), dev_account(5), dev_account(6)
CHANNEL = 0xC0FFEE
DEPOSIT = 10 * PRICE
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclass
class Setup:
    state: FakeChainState
    scheme: ChannelScheme
    model_a: object
    domain: VoucherDomain


@pytest.fixture
def setup() -> Setup:
    state = FakeChainState()
    state.put(
        make_channel(
            CHANNEL,
            payer=PAYER.address,
            signer=SIGNER.address,
            payee=PAYEE.address,
            deposit=DEPOSIT,
            expiry=NOW + 86400,
        )
    )
    scheme = ChannelScheme(state, min_remaining_seconds=3600, refresh_interval=0, clock=lambda: NOW)
    return Setup(state, scheme, make_model(MODEL_A, payee=PAYEE.address), VoucherDomain(CHAIN_ID, ESCROW))


def offer(
    s: Setup,
    *,
    channel_id: int = CHANNEL,
    amount: int = PRICE,
    signature: bytes | None = None,
    account=SIGNER,
    domain: VoucherDomain | None = None,
    requirements: PaymentRequirements | None = None,
    model=None,
) -> VerifiedVoucher:
    if signature is None:
        signature = sign_voucher(account, domain or s.domain, channel_id, amount)
    model = model or s.model_a
    payment = paid(requirements or s.scheme.requirements(model), voucher_payload(channel_id, amount, signature))
    return run(s.scheme.verify(payment, PaidRequest(model)))


def code_of(s: Setup, **kwargs) -> str:
    with pytest.raises(PaymentRejected) as caught:
        offer(s, **kwargs)
    assert status_for(caught.value) == 402
    return caught.value.code


def test_a_valid_voucher_needs_no_rpc(setup: Setup) -> None:
    verified = offer(setup, amount=3 * PRICE)
    assert (verified.channel_id, verified.amount, verified.payer) == (CHANNEL, 3 * PRICE, PAYER.address)
    assert verified.signature == sign_voucher(SIGNER, setup.domain, CHANNEL, 3 * PRICE)
    assert "signature" not in repr(verified)  # a bearer credential stays out of logs and messages
    assert setup.state.refreshes == []


def test_unknown_channel_is_refreshed_once(setup: Setup) -> None:
    assert code_of(setup, channel_id=0xDEAD) == "unknown_channel"
    assert setup.state.refreshes == [0xDEAD]


def test_a_channel_opened_since_the_last_event_is_found_by_the_refresh(setup: Setup) -> None:
    setup.state.put(
        make_channel(7, payer=PAYER.address, signer=SIGNER.address, payee=PAYEE.address, expiry=NOW + 86400),
        on_chain_only=True,
    )
    assert offer(setup, channel_id=7).channel_id == 7
    assert setup.state.refreshes == [7]


def test_unknown_channel_refreshes_are_throttled(setup: Setup) -> None:
    setup.scheme.refresh_interval = 60.0
    for _ in range(3):
        assert code_of(setup, channel_id=0xDEAD) == "unknown_channel"
    assert setup.state.refreshes == [0xDEAD]


def test_an_id_found_absent_is_asked_again_only_once_the_view_moves(setup: Setup) -> None:
    for _ in range(3):
        assert code_of(setup, channel_id=0xDEAD) == "unknown_channel"
    assert setup.state.refreshes == [0xDEAD]  # refresh_interval is 0: the negative cache answered
    setup.state.put(
        make_channel(0xDEAD, payer=PAYER.address, signer=SIGNER.address, payee=PAYEE.address, expiry=NOW + 86400),
        on_chain_only=True,
    )
    setup.state.block_number += 1  # the daemon's view moved past the block it was absent in
    assert offer(setup, channel_id=0xDEAD).channel_id == 0xDEAD
    assert setup.state.refreshes == [0xDEAD, 0xDEAD]


class OneLookup:
    """A look-up budget of one, then a wait of 7 s."""

    def __init__(self) -> None:
        self.spent: list[str | None] = []

    def take(self, client: str | None) -> int:
        self.spent.append(client)
        return 0 if len(self.spent) == 1 else 7


def test_only_lookups_that_reach_the_chain_spend_the_clients_budget(setup: Setup) -> None:
    budget = setup.scheme.lookup_budget = OneLookup()
    payment = paid(setup.scheme.requirements(setup.model_a),
                   voucher_payload(0xBEEF, PRICE, sign_voucher(SIGNER, setup.domain, 0xBEEF, PRICE)))
    request = PaidRequest(setup.model_a, client="203.0.113.7")
    for _ in range(2):  # the second is answered by the negative cache
        with pytest.raises(PaymentRejected) as caught:
            run(setup.scheme.verify(payment, request))
        assert caught.value.code == "unknown_channel"
    assert offer(setup).channel_id == CHANNEL  # a known channel costs nothing
    assert budget.spent == ["203.0.113.7"]
    other = paid(setup.scheme.requirements(setup.model_a),
                 voucher_payload(0xF00D, PRICE, sign_voucher(SIGNER, setup.domain, 0xF00D, PRICE)))
    with pytest.raises(PaymentRejected) as caught:
        run(setup.scheme.verify(other, request))
    assert (caught.value.code, status_for(caught.value), caught.value.retry_after) == ("too_many_lookups", 429, 7)
    assert setup.state.refreshes == [0xBEEF]


def test_voucher_for_another_payee(setup: Setup) -> None:
    setup.state.put(
        make_channel(8, payer=PAYER.address, signer=SIGNER.address, payee=OTHER.address, expiry=NOW + 86400)
    )
    assert code_of(setup, channel_id=8) == "wrong_payee"


def test_voucher_for_another_model(setup: Setup) -> None:
    setup.state.put(
        make_channel(
            9, payer=PAYER.address, signer=SIGNER.address, payee=PAYEE.address, model_id=MODEL_B, expiry=NOW + 86400
        )
    )
    assert code_of(setup, channel_id=9) == "wrong_model"


def test_voucher_for_another_chain_or_escrow(setup: Setup) -> None:
    assert code_of(setup, domain=VoucherDomain(1, ESCROW)) == "bad_signature"
    assert code_of(setup, domain=VoucherDomain(CHAIN_ID, "0x" + "12" * 20)) == "bad_signature"


def test_signature_by_someone_else_than_the_channel_signer(setup: Setup) -> None:
    assert code_of(setup, account=PAYER) == "bad_signature"  # even the payer: only `signer` signs vouchers


def test_signature_for_another_amount(setup: Setup) -> None:
    other = sign_voucher(SIGNER, setup.domain, CHANNEL, PRICE)
    assert code_of(setup, amount=2 * PRICE, signature=other) == "bad_signature"


def test_malformed_and_malleable_signatures(setup: Setup) -> None:
    good = sign_voucher(SIGNER, setup.domain, CHANNEL, PRICE)
    r, s, v = good[:32], int.from_bytes(good[32:64], "big"), good[64]
    high_s = r + (N - s).to_bytes(32, "big") + bytes([55 - v])  # the malleable twin: same signer, high s
    for bad in (high_s, bytes(65), good[:64] + bytes([v - 27]), good[:64], good + b"\0", b"\xff" * 65):
        assert code_of(setup, signature=bad) == "bad_signature"


def test_a_voucher_sent_again_is_not_recomputed_but_still_bound(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    from marketplace.payments.schemes import channel as channel_module

    good = sign_voucher(SIGNER, setup.domain, CHANNEL, 4 * PRICE)
    offer(setup, amount=4 * PRICE, signature=good)
    recoveries = []
    real = channel_module.recover_or_reject
    monkeypatch.setattr(channel_module, "recover_or_reject", lambda *a: recoveries.append(a) or real(*a))
    offer(setup, amount=4 * PRICE, signature=good)  # pre-authorized voucher, sent again
    assert recoveries == []
    s = int.from_bytes(good[32:64], "big")
    twin = good[:32] + (N - s).to_bytes(32, "big") + bytes([55 - good[64]])
    assert code_of(setup, amount=4 * PRICE, signature=twin) == "bad_signature"
    assert code_of(setup, amount=5 * PRICE, signature=good) == "bad_signature"
    assert len(recoveries) == 2


def test_signature_text_that_is_not_hex(setup: Setup) -> None:
    payload = voucher_payload(CHANNEL, PRICE, bytes(65))
    payload["signature"] = "0x" + "zz" * 65
    payment = paid(setup.scheme.requirements(setup.model_a), payload)
    with pytest.raises(PaymentRejected) as caught:
        run(setup.scheme.verify(payment, PaidRequest(setup.model_a)))
    assert caught.value.code == "bad_signature"
    del payload["signature"]
    with pytest.raises(PaymentRejected) as caught:
        run(setup.scheme.verify(paid(setup.scheme.requirements(setup.model_a), payload), PaidRequest(setup.model_a)))
    assert caught.value.code == "invalid_payload"


@pytest.mark.parametrize("channel_id", [str(CHANNEL), "0x" + "ab" * 31, 12345])
def test_channel_id_must_be_32_byte_hex(setup: Setup, channel_id: object) -> None:
    payload = voucher_payload(CHANNEL, PRICE, sign_voucher(SIGNER, setup.domain, CHANNEL, PRICE))
    payload["channelId"] = channel_id  # type: ignore[assignment]
    with pytest.raises(PaymentRejected) as caught:
        run(setup.scheme.verify(paid(setup.scheme.requirements(setup.model_a), payload), PaidRequest(setup.model_a)))
    assert (caught.value.code, status_for(caught.value)) == ("invalid_payload", 400)


def test_amount_above_deposit_refreshes_once_then_refuses(setup: Setup) -> None:
    assert code_of(setup, amount=DEPOSIT + 1) == "amount_exceeds_deposit"
    assert setup.state.refreshes == [CHANNEL]


def test_a_top_up_seen_by_the_refresh_makes_it_pass(setup: Setup) -> None:
    setup.state.top_up(CHANNEL, PRICE)
    verified = offer(setup, amount=DEPOSIT + PRICE)
    assert verified.amount == DEPOSIT + PRICE and verified.channel.deposit == DEPOSIT + PRICE
    assert setup.state.refreshes == [CHANNEL]
    assert setup.state.channel(CHANNEL).deposit == DEPOSIT + PRICE  # type: ignore[union-attr]


def test_above_deposit_with_a_bad_signature_never_reaches_the_chain(setup: Setup) -> None:
    assert code_of(setup, amount=DEPOSIT + 1, account=OTHER) == "bad_signature"
    assert setup.state.refreshes == []


@pytest.mark.parametrize(
    "remaining,code", [(-5, "channel_expiring"), (0, "channel_expiring"), (3599, "channel_expiring"), (3600, None)]
)
def test_expired_or_nearly_expired_channel(setup: Setup, remaining: int, code: str | None) -> None:
    setup.state.put(replace(setup.state.cached[CHANNEL], expiry=NOW + remaining))
    if code is None:
        assert offer(setup).channel_id == CHANNEL
    else:
        assert code_of(setup) == code


def test_reclaimed_channel(setup: Setup) -> None:
    setup.state.put(replace(setup.state.cached[CHANNEL], reclaimed=True))
    assert code_of(setup) == "channel_reclaimed"


def test_requirements_for_another_network_or_asset(setup: Setup) -> None:
    base = setup.scheme.requirements(setup.model_a)
    assert code_of(setup, requirements=replace(base, network="eip155:1")) == "wrong_network"
    assert code_of(setup, requirements=replace(base, asset="0x" + "34" * 20)) == "wrong_asset"
    assert code_of(setup, requirements=replace(base, scheme="exact")) == "unsupported_scheme"


def test_the_402_names_the_escrow_and_the_daemons_view_of_a_channel_but_never_its_voucher(setup: Setup) -> None:
    @dataclass
    class Credit:
        authorized: int
        consumed: int
        signature: bytes | None

    stored = sign_voucher(SIGNER, setup.domain, CHANNEL, 5 * PRICE)
    requirements = setup.scheme.requirements(
        setup.model_a, channel_id=CHANNEL, credit=Credit(5 * PRICE, 4 * PRICE, stored)
    )
    extra = requirements.extra
    assert extra["escrow"] == ESCROW and extra["chainId"] == CHAIN_ID and extra["payee"] == PAYEE.address
    assert extra["modelId"] == "0x" + MODEL_A.hex() and extra["minRemainingSeconds"] == 3600
    assert extra["voucher"]["primaryType"] == "Voucher" and extra["voucher"]["domain"]["verifyingContract"] == ESCROW
    assert extra["channel"] == {  # the stored voucher is a bearer credential: amounts only
        "channelId": f"0x{CHANNEL:064x}",
        "authorized": str(5 * PRICE),
        "consumed": str(4 * PRICE),
        "deposit": str(DEPOSIT),
        "claimed": "0",
        "expiry": NOW + 86400,
        "reclaimed": False,
    }
    assert requirements.amount == PRICE and requirements.pay_to == PAYEE.address
    unseen = setup.scheme.requirements(setup.model_a, channel_id=0xDEAD).extra["channel"]
    assert unseen == {"channelId": f"0x{0xDEAD:064x}", "authorized": "0", "consumed": "0"}


def test_the_payment_response_carries_the_receipt_and_the_channel_as_admitted(setup: Setup) -> None:
    @dataclass
    class Credit:
        authorized: int
        consumed: int
        signature: bytes | None

    verified = offer(setup, amount=3 * PRICE)
    response = setup.scheme.response(
        verified, PRICE, credit=Credit(3 * PRICE, PRICE, verified.signature), receipt={"r": 1}
    )
    decoded = parse_payment_response(response.header())
    assert decoded.success and decoded.transaction == "" and decoded.amount == PRICE and decoded.payer == PAYER.address
    assert decoded.extra["scheme"] == "channel" and decoded.extra["receipt"] == {"r": 1}
    assert verified.signature.hex() not in base64.b64decode(response.header()).decode()
    assert decoded.extra["channel"]["authorized"] == str(3 * PRICE) and decoded.extra["channel"]["consumed"] == str(
        PRICE
    )


def test_channel_hint_header() -> None:
    assert parse_channel_hint(None) is None and parse_channel_hint(" ") is None
    assert parse_channel_hint(f"0x{CHANNEL:064x}") == CHANNEL == parse_channel_hint(str(CHANNEL))
    for bad in ("0xzz", "channel-1", "0x1" + "0" * 64):
        with pytest.raises(PaymentRejected) as caught:
            parse_channel_hint(bad)
        assert caught.value.code == "invalid_payload"


def test_the_payment_header_round_trip_is_what_the_scheme_reads(setup: Setup) -> None:
    signature = sign_voucher(SIGNER, setup.domain, CHANNEL, PRICE)
    header = PaymentPayload(
        setup.scheme.requirements(setup.model_a), voucher_payload(CHANNEL, PRICE, signature)
    ).header()
    assert len(header) < 2048
    assert offer(setup, signature=signature).amount == PRICE


# --- on chain --------------------------------------------------------------------------------


def test_on_chain_open_verify_and_top_up(w3, contracts, dev_accounts, snapshot) -> None:
    owner, payer, signer, payee = dev_accounts[0], dev_accounts[2], dev_accounts[3], dev_accounts[5]
    mint(contracts, w3, owner, payer.address, 10 * TOKENS)
    model = register_model(contracts, w3, owner, payee=payee.address)
    state = DeployedChainState(w3, contracts)
    channel_id = state.open_channel(
        payer, signer=signer.address, payee=payee.address, model_id=model.model_id, deposit=DEPOSIT
    )
    scheme = ChannelScheme(state, refresh_interval=0)  # clock: the chain's time, state.now()
    domain = VoucherDomain(CHAIN_ID, contracts.addresses["PaymentChannels"])

    def verify(amount: int) -> VerifiedVoucher:
        payload = voucher_payload(channel_id, amount, sign_voucher(signer, domain, channel_id, amount))
        return run(scheme.verify(paid(scheme.requirements(model), payload), PaidRequest(model)))

    assert verify(PRICE).channel.deposit == DEPOSIT  # unknown to the cache: learnt by one refresh
    with pytest.raises(PaymentRejected) as caught:
        verify(DEPOSIT + PRICE)
    assert caught.value.code == "amount_exceeds_deposit"

    sender = Sender(w3, payer)
    sender.transact(contracts.token.functions.approve(contracts.channels.address, PRICE))
    sender.transact(contracts.channels.functions.topUp(channel_id, PRICE))
    assert verify(DEPOSIT + PRICE).channel.deposit == DEPOSIT + PRICE
