"""The `license` scheme: the holder of a valid license NFT for the model is served without charge.

The holder signs an EIP-712 access message in the domain
``{name: "ModelMarketplace", version: "1", chainId, verifyingContract: Licenses}``:

    LicenseAccess(uint256 licenseId,bytes32 modelId,string method,string path,bytes32 requestHash,
                  uint256 nonce,uint256 deadline)

    payload = {"licenseId": "<decimal>", "nonce": "<decimal uint256>", "deadline": "<unix seconds>",
               "method": "POST", "path": "/v1/models/0x…/infer",
               "requestHash": "0x<sha256 of the request body>", "signature": "0x<65 bytes>"}

The message names one request: the HTTP method, the URL path (no query string) and SHA-256 of the
exact body (the digest receipts carry); the model id comes from the URL being called, so a
signature for another model does not recover to the holder. `nonce` makes it single-use: after
`verify`, `admit` records (licenseId, nonce) in the shared ledger (`ledger.access`) and refuses
the pair a second time on any replica ("access_replayed").

Checks, in order: deadline in the future ("access_expired") and at most `max_window_seconds` away
("access_window_too_long"), method, path and body hash ("request_mismatch"), signature
("bad_signature"), then the license as the chain has it, cached for `cache_ttl` seconds (call
`invalidate` on its Transfer events): it exists ("license_invalid"), is for this model
("license_wrong_model"), has not expired ("license_expired"), is valid (model not retired,
"license_invalid"), and the signer owns it ("not_license_holder"). A cached entry that disagrees
with the signer (no such license, another owner) is re-read, at most once per `refresh_interval`,
since the license may just have been bought or transferred to the signer; the throttle keeps
strangers from turning signatures into RPC calls.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, ClassVar

import requests
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, Web3Exception

from marketplace.chain.compiled import load_compiled
from marketplace.chain.views import ChainState, ModelInfo
from marketplace.payments.eip712 import (
    DOMAIN_VERSION,
    LICENSE_ACCESS,
    MARKETPLACE_DOMAIN_NAME,
    Domain,
    checksum_address,
    sign_digest,
)
from marketplace.payments.errors import PaymentRejected
from marketplace.payments.ledger.access import AccessNonces
from marketplace.payments.receipts import body_hash
from marketplace.payments.schemes.base import (
    Admission,
    Charge,
    PaidRequest,
    PaymentScheme,
    blocking,
    check_binding,
    read_signature,
    recover_or_reject,
)
from marketplace.payments.x402 import Fields, PaymentPayload, PaymentRequirements, SettlementResponse

__all__ = [
    "LicenseAccess",
    "LicenseAdmission",
    "LicenseRecord",
    "LicenseScheme",
    "VerifiedLicense",
    "license_access_digest",
    "license_domain",
    "sign_license_access",
]

_MAX_CACHED = 16_384


@dataclass(frozen=True, slots=True)
class LicenseAccess:
    """What one LicenseAccess message says: which license opens which request, once, until when."""

    license_id: int
    model_id: bytes
    method: str
    path: str
    request_hash: bytes  # SHA-256 of the body
    nonce: int
    deadline: int

    def digest(self, domain: Domain) -> bytes:
        """The EIP-712 hash a signature of this message signs in `domain` (the Licenses contract's)."""
        return domain.digest(LICENSE_ACCESS, self.license_id, self.model_id, self.method, self.path,
                             self.request_hash, self.nonce, self.deadline)


def license_domain(chain_id: int, licenses: str) -> Domain:
    """The EIP-712 domain of license access messages: the Licenses contract on `chain_id`."""
    return Domain(MARKETPLACE_DOMAIN_NAME, DOMAIN_VERSION, chain_id, licenses)


def license_access_digest(chain_id: int, licenses: str, access: LicenseAccess) -> bytes:
    """The EIP-712 hash a LicenseAccess signature signs."""
    return access.digest(license_domain(chain_id, licenses))


def sign_license_access(
    account: LocalAccount,
    *,
    chain_id: int,
    licenses: str,
    license_id: int,
    model_id: bytes,
    method: str,
    path: str,
    body: bytes,
    deadline: int,
) -> dict[str, str]:
    """The PAYMENT-SIGNATURE `payload` opening one request (method, URL path, body) once with a
    license (client side), under a fresh random nonce."""
    access = LicenseAccess(
        license_id, model_id, method.upper(), path, body_hash(body), secrets.randbits(256), deadline
    )
    signature = sign_digest(account, license_access_digest(chain_id, licenses, access))
    return {
        "licenseId": str(license_id),
        "nonce": str(access.nonce),
        "deadline": str(deadline),
        "method": access.method,
        "path": path,
        "requestHash": "0x" + access.request_hash.hex(),
        "signature": "0x" + signature.hex(),
    }


@dataclass(frozen=True, slots=True)
class LicenseRecord:
    """A license as read from the chain (None in the cache: no such license)."""

    license_id: int
    owner: str  # lowercase
    model_id: bytes
    expires_at: int  # 0: never
    valid: bool  # Licenses.isValid when read (exists, unexpired, model not retired)
    read_at: float


@dataclass(frozen=True, slots=True)
class VerifiedLicense:
    """A request opened by the holder of a valid license; served without charge."""

    scheme: ClassVar[str] = "license"
    license_id: int
    holder: str  # checksummed
    model_id: bytes
    expires_at: int
    nonce: int  # the daemon uses (license_id, nonce) once: ledger.access
    deadline: int  # chain time until which the message is accepted


class LicenseAdmission(Admission):
    """A request opened by a license, its access nonce used: served without charge."""

    scheme = "license"

    def __init__(self, licenses: LicenseScheme, verified: VerifiedLicense) -> None:
        self._licenses, self.verified = licenses, verified

    async def settle(self) -> Charge:
        return Charge(0, license_id=self.verified.license_id)

    def response(self, charge: Charge, receipt: dict[str, Any]) -> SettlementResponse:
        return self._licenses.response(self.verified, receipt=receipt)


class LicenseScheme(PaymentScheme[VerifiedLicense]):
    """Verifies license access messages (license state is read from chain and cached briefly) and
    uses each access nonce once in `access` (the daemon's; without it the scheme only verifies)."""

    name = "license"

    def __init__(
        self,
        state: ChainState,
        w3: Web3,
        *,
        max_window_seconds: int = 300,
        cache_ttl: float = 30.0,
        refresh_interval: float = 2.0,
        chain_timeout: float = 4.0,
        clock: Callable[[], float] | None = None,
        executor: Executor | None = None,
        access: AccessNonces | None = None,
    ) -> None:
        super().__init__(state)
        self.access = access
        self.licenses = checksum_address(state.licenses)
        self.domain = license_domain(state.chain_id, self.licenses)
        self.max_window_seconds = max_window_seconds
        self.cache_ttl = cache_ttl
        self.refresh_interval = refresh_interval
        self.chain_timeout = chain_timeout  # a call that needs a chain read is answered within it
        self._clock: Callable[[], float] = clock or state.now  # chain time, as the contracts see it
        self._executor = executor
        self._contract = w3.eth.contract(
            address=Web3.to_checksum_address(self.licenses), abi=load_compiled("Licenses").abi
        )
        self._cache: dict[int, tuple[float, LicenseRecord | None]] = {}

    def requirements(self, model: ModelInfo) -> PaymentRequirements:
        return PaymentRequirements(
            scheme=self.name,
            network=self.network,
            amount=0,
            asset=self.licenses,  # nothing is transferred; the asset that opens access is the license NFT
            pay_to=checksum_address(model.payee),
            max_timeout_seconds=self.max_window_seconds,
            extra={
                "licenses": self.licenses,
                "chainId": self.chain_id,
                "modelId": "0x" + model.model_id.hex(),
                "maxWindowSeconds": self.max_window_seconds,
                "requestHash": "sha256",
                "access": self.domain.offer(LICENSE_ACCESS),
            },
        )

    def response(self, verified: VerifiedLicense, *, receipt: dict[str, Any] | None = None) -> SettlementResponse:
        """The PAYMENT-RESPONSE of a licensed call: nothing charged, the receipt, the license used."""
        extra: dict[str, Any] = {"scheme": self.name}
        if receipt is not None:
            extra["receipt"] = receipt
        extra["license"] = {"licenseId": str(verified.license_id), "expiresAt": verified.expires_at}
        return SettlementResponse(
            success=True, network=self.network, transaction="", payer=verified.holder, amount=0, extra=extra
        )

    def invalidate(self, license_id: int | None = None) -> None:
        """Forget one license (on its Transfer event) or every cached license."""
        if license_id is None:
            self._cache.clear()
        else:
            self._cache.pop(license_id, None)

    async def admit(self, payment: PaymentPayload, request: PaidRequest) -> LicenseAdmission:
        """Verify the access message and use its nonce (once, across replicas)."""
        verified = await self.verify(payment, request)
        if self.access is None:
            raise RuntimeError("a LicenseScheme without access nonces only verifies")
        if not await self.access.use(verified.license_id, verified.nonce, verified.deadline, now=self.state.now()):
            raise PaymentRejected("access_replayed",
                                  f"nonce {verified.nonce} of license {verified.license_id} already opened a request")
        return LicenseAdmission(self, verified)

    async def verify(self, payment: PaymentPayload, request: PaidRequest) -> VerifiedLicense:
        model = request.model
        self.check_accepted(payment)
        fields = Fields(payment.payload, "payment.payload")
        access = LicenseAccess(
            fields.uint("licenseId"), model.model_id, fields.text("method"), fields.text("path"),
            fields.hex_bytes("requestHash", 32), fields.uint("nonce"), fields.uint("deadline"),
        )
        license_id, deadline = access.license_id, access.deadline
        signature = read_signature(fields)

        now = int(self._clock())
        check_binding(request, method=access.method, path=access.path, request_hash=access.request_hash,
                      deadline=deadline, now=now, max_window=self.max_window_seconds)
        signer = recover_or_reject(access.digest(self.domain), signature)
        signer_hex = "0x" + signer.hex()

        record = await self._record(license_id, signer_hex)
        if record is None:
            raise PaymentRejected("license_invalid", f"license {license_id} does not exist")
        if record.model_id != model.model_id:
            raise PaymentRejected(
                "license_wrong_model",
                f"license {license_id} is for model 0x{record.model_id.hex()}, not 0x{model.model_id.hex()}",
            )
        if record.expires_at != 0 and record.expires_at <= now:
            raise PaymentRejected("license_expired", f"license {license_id} expired at {record.expires_at}")
        if not record.valid:
            raise PaymentRejected("license_invalid", f"license {license_id} is not valid (its model is retired)")
        if record.owner != signer_hex:
            raise PaymentRejected(
                "not_license_holder",
                f"the access message is signed by {checksum_address(signer)}, "
                f"not by the holder of license {license_id}",
            )
        return VerifiedLicense(
            license_id, checksum_address(signer), record.model_id, record.expires_at, access.nonce, deadline
        )

    async def _record(self, license_id: int, signer: str) -> LicenseRecord | None:
        """The license from the cache, or read from the chain when not cached (or older than
        `cache_ttl`), or when the cache disagrees with the signer (no such license, another owner)
        and is older than `refresh_interval`: it may just have been bought or transferred."""
        now = time.monotonic()
        cached = self._cache.get(license_id)
        if cached is not None:
            age = now - cached[0]
            record = cached[1]
            agrees = record is not None and record.owner == signer
            if age < self.cache_ttl and (agrees or age < self.refresh_interval):
                return record
        record = await self._read(license_id)
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[license_id] = (now, record)
        return record

    async def _read(self, license_id: int) -> LicenseRecord | None:
        functions = self._contract.functions
        try:
            owner, valid, terms = await asyncio.wait_for(asyncio.gather(
                blocking(self._executor, self._call, functions.ownerOf(license_id)),
                blocking(self._executor, self._call, functions.isValid(license_id)),
                blocking(self._executor, self._call, functions.licenseOf(license_id)),
            ), self.chain_timeout)
        except _NoSuchLicense:
            return None
        except TimeoutError:  # a stalled node: the threads finish on their own, the caller does not wait
            raise PaymentRejected("chain_unavailable", "the chain node did not answer in time; retry later") from None
        _offer_id, model_id, expires_at, _transferable = terms
        return LicenseRecord(
            license_id, str(owner).lower(), bytes(model_id), int(expires_at), bool(valid), time.monotonic()
        )

    @staticmethod
    def _call(fn: Any) -> Any:
        try:
            return fn.call()
        except (ContractCustomError, ContractLogicError):  # ERC721NonexistentToken
            raise _NoSuchLicense from None
        except (requests.RequestException, OSError, Web3Exception, ValueError) as error:
            # the error names the node's URL (maybe with an API key): not for the client
            raise PaymentRejected("chain_unavailable", f"could not read the license ({type(error).__name__})") from None


class _NoSuchLicense(Exception):
    pass
