"""The `trial` scheme: a provider offers N free calls of a model per consumer address.

Two EIP-712 messages in the domain ``{name: "ModelMarketplace", version: "1", chainId,
verifyingContract: ModelRegistry}``:

    TrialToken(address consumer,bytes32 modelId,uint256 calls,uint256 expiry)
        signed by the provider (the model's owner or payee, or the daemon's key): `consumer` may
        use `calls` free calls of `modelId` in all, until `expiry` (unix seconds)
    TrialRequest(address consumer,bytes32 modelId,string method,string path,bytes32 requestHash,
                 uint256 nonce,uint256 deadline)
        signed by the consumer: spend one free call on this request (bound as LicenseAccess is)

    payload = {"consumer": "0x…", "nonce": "<decimal>", "deadline": "<unix seconds>", "method": "POST",
               "path": "/v1/models/0x…/infer", "requestHash": "0x<sha256 of the body>", "signature": "0x…",
               "token": {"calls": "<decimal>", "expiry": "<unix seconds>", "signature": "0x…"}}   # token: if any

A served flat-priced model has trials when its `trial_calls` > 0 (the scheme `serves` those only: a
trial for another model is "unsupported_scheme"); `trial_token_required` (default true) is the
sybil defence: without it, anyone with a fresh key gets `trial_calls` free calls. Checks, in order:
the request binding (`check_binding`), the consumer's
signature ("bad_signature"), the token (required: "trial_token_required"; signed by an issuer:
"trial_token_invalid", for this consumer and model, unexpired: "trial_token_expired"); then `admit`
uses the nonce once across replicas (`AccessNonces`, keyed by `TRIAL_NONCE_TAG | consumer`:
"trial_replayed") and counts the call with ONE conditional upsert (`TrialCounter.take`, `used <
allowed`: "trial_exhausted"), where `allowed` is the token's `calls`, else the model's `trial_calls`.
A call not served gives its trial back; its receipt says scheme "trial", amount 0.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from eth_account.signers.local import LocalAccount

from marketplace.chain.views import ChainState, ModelInfo
from marketplace.payments.eip712 import (
    DOMAIN_VERSION,
    MARKETPLACE_DOMAIN_NAME,
    TRIAL_REQUEST,
    TRIAL_TOKEN,
    Domain,
    checksum_address,
    sign_digest,
)
from marketplace.payments.errors import PaymentRejected
from marketplace.payments.ledger.access import AccessNonces
from marketplace.payments.ledger.trials import TrialCounter
from marketplace.payments.receipts import body_hash
from marketplace.payments.schemes.base import (
    Admission,
    Charge,
    OfferContext,
    PaidRequest,
    PaymentScheme,
    check_binding,
    read_signature,
    recover_or_reject,
)
from marketplace.payments.x402 import Fields, PaymentPayload, PaymentRequirements, SettlementResponse

__all__ = [
    "TRIAL_CONSUMER_HEADER",
    "TRIAL_NONCE_TAG",
    "TrialAdmission",
    "TrialScheme",
    "TrialTerms",
    "TrialToken",
    "VerifiedTrial",
    "sign_trial_request",
    "trial_domain",
]

TRIAL_CONSUMER_HEADER = "PAYMENT-CONSUMER"  # a hint: the 402's trial offer then says how many this address used
# Trial nonces share the license-access nonce table, keyed (TRIAL_NONCE_TAG | consumer, nonce):
# license ids count up from 1 and never reach 2**255, so the two never meet.
TRIAL_NONCE_TAG = 1 << 255
_MAX_CALLS = 2**31  # a token may say more (uint256): the counter stores a 64-bit integer


def trial_domain(chain_id: int, registry: str) -> Domain:
    """The EIP-712 domain of trial tokens and requests: the ModelRegistry on `chain_id`."""
    return Domain(MARKETPLACE_DOMAIN_NAME, DOMAIN_VERSION, chain_id, registry)


@dataclass(frozen=True, slots=True)
class TrialTerms:
    """A served model's trials: `calls` per consumer (0: none), and whether a provider's token is required."""

    calls: int = 0
    token_required: bool = True


@dataclass(frozen=True, slots=True)
class TrialToken:
    """A provider's grant of `calls` free calls of `model_id` to `consumer` until `expiry`, signed."""

    consumer: str  # checksummed
    model_id: bytes
    calls: int
    expiry: int
    signature: bytes

    @classmethod
    def sign(cls, issuer: LocalAccount, domain: Domain, consumer: str, model_id: bytes, calls: int,
             expiry: int) -> TrialToken:
        """The token `issuer` (the provider) signs for `consumer`."""
        consumer = checksum_address(consumer)
        signature = sign_digest(issuer, domain.digest(TRIAL_TOKEN, consumer, model_id, calls, expiry))
        return cls(consumer, model_id, calls, expiry, signature)

    def payload(self) -> dict[str, str]:
        """The `token` object of a trial payload (the consumer and model are the request's)."""
        return {"calls": str(self.calls), "expiry": str(self.expiry), "signature": "0x" + self.signature.hex()}

    def to_json(self) -> dict[str, str]:
        """The whole token, as `marketplace provider trial-token` writes it for the consumer."""
        return {"consumer": self.consumer, "modelId": "0x" + self.model_id.hex(), **self.payload()}

    @classmethod
    def from_json(cls, obj: object) -> TrialToken:
        """A token from `to_json`'s form; PaymentRejected(invalid_payload) naming the bad field."""
        fields = Fields(obj, "token")
        return cls(checksum_address(fields.address("consumer")), fields.hex_bytes("modelId", 32),
                   fields.uint("calls"), fields.uint("expiry"), read_signature(fields))


def sign_trial_request(
    account: LocalAccount, domain: Domain, *, model_id: bytes, method: str, path: str, body: bytes, deadline: int,
    token: TrialToken | None = None,
) -> dict[str, Any]:
    """The PAYMENT-SIGNATURE `payload` spending one free call on one request (method, URL path,
    body), under a fresh random nonce (client side); with the provider's `token`, if any."""
    consumer, nonce, request_hash = account.address, secrets.randbits(256), body_hash(body)
    digest = domain.digest(TRIAL_REQUEST, consumer, model_id, method.upper(), path, request_hash, nonce, deadline)
    payload: dict[str, Any] = {
        "consumer": consumer, "nonce": str(nonce), "deadline": str(deadline), "method": method.upper(),
        "path": path, "requestHash": "0x" + request_hash.hex(), "signature": "0x" + sign_digest(account, digest).hex(),
    }
    if token is not None:
        payload["token"] = token.payload()
    return payload


@dataclass(frozen=True, slots=True)
class VerifiedTrial:
    """A trial request for this call, signed by `consumer`, who may use `allowed` trials of the model."""

    scheme: ClassVar[str] = "trial"
    consumer: bytes  # 20 bytes
    model_id: bytes
    allowed: int
    nonce: int
    deadline: int


class TrialAdmission(Admission):
    """One trial counted for the call (call number `used` of `allowed`); given back if not served."""

    scheme = "trial"

    def __init__(self, trials: TrialScheme, verified: VerifiedTrial, used: int) -> None:
        self._trials, self.verified, self.used = trials, verified, used
        self._given_back = False

    async def settle(self) -> Charge:
        return Charge(0)

    def response(self, charge: Charge, receipt: dict[str, Any]) -> SettlementResponse:
        trial = {"call": self.used, "calls": self.verified.allowed}
        extra = {"scheme": self.scheme, "receipt": receipt, "trial": trial}
        return SettlementResponse(success=True, network=self._trials.network, transaction="",
                                  payer=checksum_address(self.verified.consumer), amount=0, extra=extra)

    async def refund(self) -> None:
        if not self._given_back:
            self._given_back = True
            await self._trials.counter.give_back(self.verified.consumer, self.verified.model_id)


class TrialScheme(PaymentScheme[VerifiedTrial]):
    """Free trial calls of the models `terms` names (by model id), counted in `counter`, each trial
    request's nonce used once in `access`. Tokens are accepted from the model's owner or payee, or
    from `issuers` (the daemon's key)."""

    name = "trial"

    def __init__(
        self,
        state: ChainState,
        registry: str,
        terms: Mapping[bytes, TrialTerms],
        *,
        access: AccessNonces,
        counter: TrialCounter,
        issuers: tuple[str, ...] = (),
        max_window_seconds: int = 300,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(state)
        self.registry = checksum_address(registry)
        self.domain = trial_domain(state.chain_id, self.registry)
        self.terms = {bytes(model): terms for model, terms in terms.items() if terms.calls > 0}
        self.access, self.counter = access, counter
        self.issuers = frozenset(issuer.lower() for issuer in issuers)
        self.max_window_seconds = max_window_seconds
        self._clock: Callable[[], float] = clock or state.now

    def requirements(self, model: ModelInfo) -> PaymentRequirements:
        terms = self.terms.get(model.model_id, TrialTerms())
        return PaymentRequirements(
            scheme=self.name,
            network=self.network,
            amount=0,
            asset=self.registry,  # nothing is transferred
            pay_to=checksum_address(model.payee),
            max_timeout_seconds=self.max_window_seconds,
            extra={
                "registry": self.registry,
                "chainId": self.chain_id,
                "modelId": "0x" + model.model_id.hex(),
                "calls": terms.calls,
                "tokenRequired": terms.token_required,
                "maxWindowSeconds": self.max_window_seconds,
                "requestHash": "sha256",
                "request": self.domain.offer(TRIAL_REQUEST),
                "token": self.domain.offer(TRIAL_TOKEN),
            },
        )

    def serves(self, model: ModelInfo) -> bool:
        """The flat-priced models with trials (a metered model's calls are paid by `metered` only)."""
        return model.model_id in self.terms and super().serves(model)

    async def offer(self, model: ModelInfo, context: OfferContext) -> PaymentRequirements:
        """`requirements`, with `extra.used` when PAYMENT-CONSUMER names an address."""
        requirements = self.requirements(model)
        hint = context.headers.get(TRIAL_CONSUMER_HEADER)
        if hint is not None:
            consumer = Fields({"consumer": hint.strip()}, TRIAL_CONSUMER_HEADER).address("consumer")
            requirements.extra["used"] = await self.counter.used(bytes.fromhex(consumer[2:]), model.model_id)
        return requirements

    async def admit(self, payment: PaymentPayload, request: PaidRequest) -> TrialAdmission:
        """Verify, use the nonce (once across replicas), count the trial (`used < allowed`, one upsert)."""
        verified = await self.verify(payment, request)
        if not await self.access.use(TRIAL_NONCE_TAG | int.from_bytes(verified.consumer, "big"), verified.nonce,
                                     verified.deadline, now=self.state.now()):
            raise PaymentRejected("trial_replayed", f"nonce {verified.nonce} already opened a trial request")
        used = await self.counter.take(verified.consumer, verified.model_id, verified.allowed)
        if used is None:
            raise PaymentRejected("trial_exhausted", f"{checksum_address(verified.consumer)} used all its "
                                                     f"{verified.allowed} trial calls of this model")
        return TrialAdmission(self, verified, used)

    async def verify(self, payment: PaymentPayload, request: PaidRequest) -> VerifiedTrial:
        model = request.model
        self.check_accepted(payment)
        terms = self.terms[model.model_id]  # the registry admits a scheme only for the models it `serves`
        fields = Fields(payment.payload, "payment.payload")
        consumer = checksum_address(fields.address("consumer"))
        method, path = fields.text("method"), fields.text("path")
        request_hash = fields.hex_bytes("requestHash", 32)
        nonce, deadline = fields.uint("nonce"), fields.uint("deadline")
        signature = read_signature(fields)
        token_fields = fields.optional_dict("token")
        now = int(self._clock())
        check_binding(request, method=method, path=path, request_hash=request_hash, deadline=deadline, now=now,
                      max_window=self.max_window_seconds)
        signer = recover_or_reject(self.domain.digest(
            TRIAL_REQUEST, consumer, model.model_id, method, path, request_hash, nonce, deadline), signature)
        if checksum_address(signer) != consumer:
            raise PaymentRejected("bad_signature", f"the trial request is not signed by {consumer}")
        allowed = terms.calls
        if token_fields is not None:
            allowed = self._token_calls(Fields(token_fields, "payment.payload.token"), consumer, model, now)
        elif terms.token_required:
            raise PaymentRejected("trial_token_required",
                                  f"free trials of model 0x{model.model_id.hex()} need a token from its provider")
        return VerifiedTrial(signer, model.model_id, allowed, nonce, deadline)

    def _token_calls(self, fields: Fields, consumer: str, model: ModelInfo, now: int) -> int:
        """The calls a token grants `consumer` on `model`, if an issuer signed it for them and it is unexpired."""
        calls, expiry, signature = fields.uint("calls"), fields.uint("expiry"), read_signature(fields)
        issuer = "0x" + recover_or_reject(
            self.domain.digest(TRIAL_TOKEN, consumer, model.model_id, calls, expiry), signature).hex()
        if issuer not in self.issuers | {model.owner.lower(), model.payee.lower()}:
            raise PaymentRejected("trial_token_invalid", f"the trial token for {consumer} on model "
                                  f"0x{model.model_id.hex()} is not signed by its provider")
        if expiry <= now:
            raise PaymentRejected("trial_token_expired", f"the trial token expired at {expiry} (now {now})")
        return min(calls, _MAX_CALLS)
