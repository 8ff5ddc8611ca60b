"""Gas benchmark of the marketplace contracts against the SingularityNET baseline.

Starts its own Anvil, deploys the four contracts from the committed artifacts, performs each operation of the
table in DESIGN.md once in a realistic steady state, and reports the receipt's gasUsed (21,000 base included):

    .venv/bin/python bench/gas.py            # prints the table, writes bench/results/gas.json
    .venv/bin/python bench/gas.py --source   # the same, compiling contracts/ now instead of the artifacts

Scenarios (all deterministic: fixed keys, salts and block times):
- open: the payer approved a large allowance earlier; the escrow already holds other channels' tokens.
- open with permit: a payer's first permit ever (nonce 0 -> 1), approving exactly the deposit.
- top up: by the payer, from an earlier large allowance.
- claim: a channel claimed before; the payee already holds tokens; the whole voucher (payout = amount).
- claimMany: 10 channels never claimed before, one payee who already holds tokens, whole vouchers.
- (extra) a partial claim (payout below the voucher's amount), claimMany of one channel.
- reclaim: after expiry; the payer still holds tokens.
- (extra) cooperative close: before expiry, a channel claimed before, a voucher above the watermark, payee and
  payer already hold tokens (both transfers happen); its issue-12 target is COOPERATIVE_CLOSE_TARGET.
- register: a model with a 40-character endpoint URL; (extra) then give it per-token prices.
`measure()` is also used by tests/contracts/test_gas_snapshot.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3
from web3.contract import Contract

from marketplace.payments.claimer import compact_signature
from marketplace.payments.eip712 import CLOSE_CHANNEL, PERMIT, Domain, sign_digest
from marketplace.payments.vouchers import VoucherDomain, sign_voucher

__all__ = ["COOPERATIVE_CLOSE", "COOPERATIVE_CLOSE_TARGET", "OPERATIONS", "main", "measure", "render_table"]

# operation -> (SingularityNET gasUsed, our target), both from DESIGN.md / the task.
OPERATIONS: dict[str, tuple[int, int]] = {
    "open a channel, already approved": (172_546, 110_000),
    "open with permit, one tx": (246_034, 145_000),
    "top up": (89_889, 60_000),
    "claim one voucher, payee already holds tokens": (50_157, 50_000),
    "claimMany, 10 fresh channels, one payee": (445_594, 180_000),
    "reclaim after expiry": (53_937, 45_000),
    "register a model": (166_621, 140_000),
}

# SingularityNET has no cooperative close to compare with: an extra figure, with issue 12's target.
COOPERATIVE_CLOSE = "(extra) cooperative close: payee paid and payer refunded in one tx"
COOPERATIVE_CLOSE_TARGET = 60_000

_TOKEN = 10**18
_START_TIME = 1_900_000_000  # a fixed block time, so calldata (expiries) and gas are the same every run


@dataclass
class _Env:
    w3: Web3
    token: Contract
    registry: Contract
    channels: Contract
    owner: LocalAccount  # deploys the contracts and owns the token (mints)


def _send(env: _Env, fn: Any, sender: str) -> dict[str, Any]:
    tx_hash = fn.transact({"from": sender, "gas": 2_000_000})
    receipt = env.w3.eth.wait_for_transaction_receipt(tx_hash)
    if receipt["status"] != 1:
        raise RuntimeError(f"{fn.fn_name} reverted")
    return dict(receipt)


def _at(env: _Env, timestamp: int) -> None:
    env.w3.provider.make_request("evm_setNextBlockTimestamp", [timestamp])


def _sign_voucher(env: _Env, signer: LocalAccount, channel_id: int, amount: int) -> bytes:
    return sign_voucher(signer, VoucherDomain(env.w3.eth.chain_id, env.channels.address), channel_id, amount)


def _permit_signature(env: _Env, owner: LocalAccount, spender: str, value: int, deadline: int) -> bytes:
    """A 65-byte ERC-2612 permit signature by `owner`, in the token's domain."""
    domain = Domain("Market Token", "1", env.w3.eth.chain_id, env.token.address)
    nonce = env.token.functions.nonces(owner.address).call()
    return sign_digest(owner, domain.digest(PERMIT, owner.address, spender, value, nonce, deadline))


def _terms(payer: str, signer: str, payee: str, model_id: bytes, salt: int) -> tuple[str, str, str, bytes, int]:
    return (payer, signer, payee, model_id, salt)


def measure(
    w3: Web3, token: Contract, registry: Contract, channels: Contract, accounts: list[LocalAccount]
) -> dict[str, int]:
    """Run every operation once on a chain where `accounts[0]` owns `token`; returns operation -> gasUsed.

    The result has every key of OPERATIONS, plus informational "(extra) ..." figures.

    Moves the chain's clock forward (take a snapshot around it if the chain is shared).
    """
    env = _Env(w3, token, registry, channels, accounts[0])
    owner, payer, payee, permit_payer, provider = (a.address for a in accounts[:5])
    signer = Account.from_key(keccak(b"marketplace bench voucher signer"))
    escrow = channels.address
    now = max(_START_TIME, w3.eth.get_block("latest")["timestamp"] + 1)
    _at(env, now)
    expiry = now + 30 * 24 * 3600
    model_id = keccak(b"bench model")
    deposit = 5 * _TOKEN
    gas: dict[str, int] = {}

    for holder in (payer, payee, permit_payer):
        _send(env, token.functions.mint(holder, 1_000 * _TOKEN), owner)
    _send(env, token.functions.approve(escrow, 10**9 * _TOKEN), payer)

    # Warm-up: an earlier channel, so the escrow already holds tokens (the steady state).
    first = _send(
        env, channels.functions.open(_terms(payer, signer.address, payee, model_id, 0), deposit, expiry), payer
    )
    gas["(extra) open the first channel of an empty escrow"] = first["gasUsed"]

    terms = _terms(payer, signer.address, payee, model_id, 1)
    channel_id = channels.functions.channelIdOf(terms).call()
    gas["open a channel, already approved"] = _send(env, channels.functions.open(terms, deposit, expiry), payer)[
        "gasUsed"
    ]

    permit_account = accounts[3]
    permit_terms = _terms(permit_payer, signer.address, payee, model_id, 0)
    signed = _permit_signature(env, permit_account, escrow, deposit, expiry)
    gas["open with permit, one tx"] = _send(
        env,
        channels.functions.openWithPermit(
            permit_terms, deposit, expiry, expiry, signed[64], signed[:32], signed[32:64]
        ),
        permit_payer,
    )["gasUsed"]

    gas["top up"] = _send(env, channels.functions.topUp(channel_id, deposit), payer)["gasUsed"]

    # A first claim on the channel, then the measured one (the channel and the payee are both not fresh).
    first = _sign_voucher(env, signer, channel_id, 2 * 10**15)
    _send(env, channels.functions.claim(terms, 2 * 10**15, 2 * 10**15, first), provider)
    voucher = b"".join(compact_signature(_sign_voucher(env, signer, channel_id, 3 * 10**15)))
    gas["claim one voucher, payee already holds tokens"] = _send(
        env, channels.functions.claim(terms, 3 * 10**15, 3 * 10**15, voucher), provider
    )["gasUsed"]
    long_form = _sign_voucher(env, signer, channel_id, 4 * 10**15)  # 65 bytes r || s || v
    gas["(extra) the same claim with a 65-byte signature"] = _send(
        env, channels.functions.claim(terms, 4 * 10**15, 4 * 10**15, long_form), provider
    )["gasUsed"]
    capped = b"".join(compact_signature(_sign_voucher(env, signer, channel_id, 6 * 10**15)))
    gas["(extra) a partial claim: payout below the voucher"] = _send(
        env, channels.functions.claim(terms, 6 * 10**15, 5 * 10**15 - 12_345, capped), provider
    )["gasUsed"]

    batch = []
    for salt in range(100, 111):
        fresh = _terms(payer, signer.address, payee, model_id, salt)
        _send(env, channels.functions.open(fresh, deposit, expiry), payer)
        fresh_id = channels.functions.channelIdOf(fresh).call()
        r, vs = compact_signature(_sign_voucher(env, signer, fresh_id, 10**15))
        batch.append((payer, signer.address, model_id, salt, 10**15, 10**15, r, vs))
    gas["claimMany, 10 fresh channels, one payee"] = _send(
        env, channels.functions.claimMany(payee, batch[:10]), provider
    )["gasUsed"]
    gas["(extra) claimMany, 1 fresh channel"] = _send(env, channels.functions.claimMany(payee, batch[10:]), provider)[
        "gasUsed"
    ]

    # The warm-up channel (salt 0): claimed once, then closed early at a payout above it, before expiry.
    warm = _terms(payer, signer.address, payee, model_id, 0)
    warm_id = channels.functions.channelIdOf(warm).call()
    _send(env, channels.functions.claim(warm, 10**15, 10**15, _sign_voucher(env, signer, warm_id, 10**15)), provider)
    deadline = now + 3600
    domain = Domain("ModelMarketplace", "1", w3.eth.chain_id, escrow)
    r, vs = compact_signature(sign_digest(accounts[2], domain.digest(CLOSE_CHANNEL, warm_id, 3 * 10**15, deadline)))
    gas[COOPERATIVE_CLOSE] = _send(
        env, channels.functions.closeCooperatively(warm, 3 * 10**15, deadline, r, vs), payer
    )["gasUsed"]

    _at(env, expiry + 1)
    gas["reclaim after expiry"] = _send(env, channels.functions.reclaim(terms), payer)["gasUsed"]

    metadata = (0x55, keccak(b"bench metadata"))
    artifact = (0x70, keccak(b"bench artifact"))
    endpoint = "https://models.example.org/v1/bench-model"
    gas["register a model"] = _send(
        env,
        registry.functions.registerModel(keccak(b"bench salt"), provider, 2 * 10**15, metadata, artifact, endpoint),
        provider,
    )["gasUsed"]
    registered = registry.functions.modelIdOf(provider, keccak(b"bench salt")).call()
    prices = (2 * 10**12, 6 * 10**12, 4_096)  # per input token, per output token, max output tokens
    gas["(extra) set token prices, first time"] = _send(
        env, registry.functions.setTokenPrices(registered, prices), provider
    )["gasUsed"]
    gas["(extra) set token prices, again"] = _send(
        env, registry.functions.setTokenPrices(registered, (3 * 10**12, 6 * 10**12, 4_096)), provider
    )["gasUsed"]
    return gas


def render_table(gas: dict[str, int]) -> list[dict[str, Any]]:
    """One row per operation: ours, SingularityNET, target, ratio, pass."""
    rows = []
    for name, (snet, target) in OPERATIONS.items():
        ours = gas[name]
        rows.append(
            {
                "operation": name,
                "gas": ours,
                "singularitynet": snet,
                "target": target,
                "ratio_vs_snet": round(ours / snet, 3),
                "pass": ours <= target,
            }
        )
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'operation':<58} {'ours':>9} {'SNET':>9} {'target':>9} {'ratio':>6}  result"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['operation']:<58} {row['gas']:>9,} {row['singularitynet']:>9,} {row['target']:>9,} "
            f"{row['ratio_vs_snet']:>6.2f}  {'pass' if row['pass'] else 'FAIL'}"
        )


def _deploy_from_source(w3: Web3, owner: LocalAccount) -> tuple[Contract, Contract, Contract]:
    """Compile contracts/ now (the settings of marketplace.chain.build) and deploy that, not the artifacts."""
    from marketplace.chain.build import compile_contracts

    artifacts = compile_contracts()

    def deploy(name: str, *args: Any) -> Contract:
        factory = w3.eth.contract(abi=artifacts[name]["abi"], bytecode=artifacts[name]["bytecode"])
        receipt = w3.eth.wait_for_transaction_receipt(factory.constructor(*args).transact({"from": owner.address}))
        return w3.eth.contract(address=receipt["contractAddress"], abi=artifacts[name]["abi"])

    token = deploy("MarketToken", owner.address)
    registry = deploy("ModelRegistry", token.address)
    return token, registry, deploy("PaymentChannels", token.address)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source", action="store_true", help="compile contracts/ now instead of using the committed artifacts"
    )
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "gas.json")
    args = parser.parse_args(argv)

    from marketplace.chain.anvil import Anvil
    from marketplace.chain.connection import connect
    from marketplace.chain.deploy import deploy_contracts
    from marketplace.chain.devkeys import dev_accounts

    accounts = dev_accounts(10)
    with Anvil() as node:
        w3 = connect(node.url, expected_chain_id=node.chain_id)
        if args.source:
            token, registry, channels = _deploy_from_source(w3, accounts[0])
        else:
            deployment = deploy_contracts(w3, accounts[0])
            token, registry, channels = (
                deployment.contract(w3, name) for name in ("MarketToken", "ModelRegistry", "PaymentChannels")
            )
        gas = measure(w3, token, registry, channels, accounts)
    rows = render_table(gas)
    _print_table(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    extra = {name: used for name, used in gas.items() if name not in OPERATIONS}
    for name, used in extra.items():
        print(f"{name:<58} {used:>9,}")
    from marketplace.chain.build import SETTINGS

    report = {
        "gas": {name: gas[name] for name in OPERATIONS},
        "extra": extra,
        "table": rows,
        "compiler": {k: v for k, v in SETTINGS.items() if k != "outputSelection"} if args.source else "artifacts",
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
