"""What the consumer signs for each x402 scheme, from the `accepts` entry the daemon offered.

    channel  channel_payload(...)       a cumulative EIP-712 voucher in the escrow's `voucher_domain(...)`
    exact    exact_payload(...)         an EIP-3009 ReceiveWithAuthorization when offered (only the payee
                                        can submit it), else a TransferWithAuthorization as x402 clients sign it
    license  license_payload(...)       a single-use LicenseAccess message for one request
    trial    trial_payload(...)         a single-use TrialRequest for one request (+ the provider's token)

Each reads the domain it signs in from the requirements (`extra`) and checks it first, so a daemon
cannot get a signature for another chain than the one it names.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from eth_account.signers.local import LocalAccount
from web3 import Web3

from marketplace.client.errors import NoPaymentOption
from marketplace.payments.eip712 import MESSAGE_TYPES, Domain, sign_digest
from marketplace.payments.schemes.channel import voucher_payload
from marketplace.payments.schemes.eip3009 import RECEIVE, TRANSFER
from marketplace.payments.schemes.license import sign_license_access
from marketplace.payments.schemes.trial import TrialToken, sign_trial_request, trial_domain
from marketplace.payments.vouchers import VoucherDomain, sign_voucher
from marketplace.payments.x402 import PaymentRequirements

__all__ = ["chain_id_of", "channel_payload", "exact_payload", "license_payload", "trial_payload", "voucher_domain"]

def chain_id_of(requirements: PaymentRequirements, url: str) -> int:
    """The chain id of an `eip155:<id>` network (and of `extra.chainId`, which must agree)."""
    prefix, _, number = requirements.network.partition(":")
    extra_chain = requirements.extra.get("chainId")
    if prefix != "eip155" or not number.isdigit() or (extra_chain is not None and extra_chain != int(number)):
        raise NoPaymentOption(url, requirements.scheme, requirements.network,
                              "not an EVM network this client signs for")
    return int(number)


def _address(requirements: PaymentRequirements, key: str, url: str) -> str:
    value = requirements.extra.get(key)
    if not isinstance(value, str) or not Web3.is_address(value):
        raise NoPaymentOption(url, requirements.scheme, f"extra.{key}={value!r}", "the offer names no valid contract")
    return Web3.to_checksum_address(value)


def voucher_domain(requirements: PaymentRequirements, url: str) -> VoucherDomain:
    """The EIP-712 domain of the escrow a `channel` offer names (checked before anything is reserved)."""
    return VoucherDomain(chain_id_of(requirements, url), _address(requirements, "escrow", url))


def channel_payload(account: LocalAccount, domain: VoucherDomain, channel_id: int, amount: int) -> dict[str, str]:
    """A voucher for the cumulative `amount` on `channel_id`, in the escrow's `domain`."""
    return voucher_payload(channel_id, amount, sign_voucher(account, domain, channel_id, amount))


def exact_payload(account: LocalAccount, requirements: PaymentRequirements, url: str, now: int, *,
                  payer: str | None = None) -> dict[str, Any]:
    """An EIP-3009 transfer of exactly the price to `payTo`, valid from now for `maxTimeoutSeconds`,
    from `account` -- or from the contract wallet `payer` whose ERC-1271 `isValidSignature` accepts
    `account`'s signature (the daemon and the token ask it).

    ReceiveWithAuthorization when `extra.authorizationTypes` offers it (nobody but the payee can
    submit it, so nobody can front-run it), else TransferWithAuthorization."""
    name, version = requirements.extra.get("name"), requirements.extra.get("version")
    offered = requirements.extra.get("authorizationTypes")
    primary_type = RECEIVE if isinstance(offered, list) and RECEIVE in offered else TRANSFER
    if not isinstance(name, str) or not isinstance(version, str) or not Web3.is_address(requirements.asset):
        raise NoPaymentOption(url, "exact", requirements.extra, "the offer lacks the token's EIP-712 name/version")
    authorization = {
        "from": Web3.to_checksum_address(payer) if payer is not None else account.address,
        "to": Web3.to_checksum_address(requirements.pay_to),
        "value": requirements.amount,
        "validAfter": 0,
        "validBefore": now + requirements.max_timeout_seconds,
        "nonce": os.urandom(32),
    }
    domain = Domain(name, version, chain_id_of(requirements, url), requirements.asset)
    signature = sign_digest(account, domain.hash(MESSAGE_TYPES[primary_type].hash_mapping(authorization)))
    return {
        "signature": "0x" + signature.hex(),
        "authorization": {key: ("0x" + value.hex() if isinstance(value, bytes) else str(value))
                          for key, value in authorization.items()},
        "primaryType": primary_type,
    }


def _model_and_deadline(requirements: PaymentRequirements, url: str, now: int) -> tuple[bytes, int]:
    """The model a license or trial offer names, and a deadline half its allowed window away."""
    model = requirements.extra.get("modelId")
    if not isinstance(model, str) or len(model) != 66:
        raise NoPaymentOption(url, requirements.scheme, requirements.extra, "the offer names no model")
    window = requirements.extra.get("maxWindowSeconds")
    window = window if isinstance(window, int) and window > 0 else 300
    return bytes.fromhex(model[2:]), now + max(window // 2, 1)


def license_payload(account: LocalAccount, requirements: PaymentRequirements, url: str, license_id: int,
                    request: httpx.Request, now: int) -> dict[str, str]:
    """A LicenseAccess signature opening this one request (method, URL path, body) once, with a
    fresh random nonce, valid for half the allowed window."""
    model_id, deadline = _model_and_deadline(requirements, url, now)
    return sign_license_access(account, chain_id=chain_id_of(requirements, url),
                               licenses=_address(requirements, "licenses", url), license_id=license_id,
                               model_id=model_id, method=request.method, path=request.url.path,
                               body=request.content, deadline=deadline)


def trial_payload(account: LocalAccount, requirements: PaymentRequirements, url: str, request: httpx.Request,
                  now: int, token: TrialToken | None) -> dict[str, Any]:
    """A TrialRequest signature spending one free call on this one request, once (a fresh random
    nonce), valid for half the allowed window; with the provider's `token` for the model, if any."""
    model_id, deadline = _model_and_deadline(requirements, url, now)
    domain = trial_domain(chain_id_of(requirements, url), _address(requirements, "registry", url))
    return sign_trial_request(account, domain, model_id=model_id, method=request.method, path=request.url.path,
                              body=request.content, deadline=deadline, token=token)
