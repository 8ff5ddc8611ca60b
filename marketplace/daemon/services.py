"""Everything the daemon runs on, built once at startup and closed at shutdown."""

from __future__ import annotations

import asyncio
import logging
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from eth_account.signers.local import LocalAccount
from web3 import Web3

from marketplace.chain.connection import connect, fail_fast_web3
from marketplace.chain.deploy import Deployment
from marketplace.chain.errors import MissingKey
from marketplace.chain.keys import account_from_hex, load_account
from marketplace.chain.state import ChainStateCache
from marketplace.chain.transactions import Sender
from marketplace.chain.views import ModelInfo
from marketplace.daemon.limits import ClientBuckets
from marketplace.daemon.observability import Metrics
from marketplace.daemon.settings import (
    DaemonSettings,
    OnnxTextRunnerConfig,
    OpenAIUpstreamRunnerConfig,
    ServedModel,
    UpstreamRunnerConfig,
)
from marketplace.errors import ConfigError
from marketplace.ipfs import CID, DagReader
from marketplace.ipfs.artifacts import get as fetch_artifact
from marketplace.ipfs.artifacts import open_store
from marketplace.metadata import ModelMetadata, parse_metadata
from marketplace.payments.claimer import Claimer, ClaimPolicy
from marketplace.payments.ledger import CreditLedger, open_ledger
from marketplace.payments.ledger.access import AccessNonces, open_access_nonces
from marketplace.payments.ledger.holds import ExactHolds, open_holds
from marketplace.payments.ledger.metered import settle_unfinished
from marketplace.payments.ledger.trials import TrialCounter, open_trial_counter
from marketplace.payments.receipts import ReceiptDomain, ReceiptSigner
from marketplace.payments.schemes.channel import ChannelScheme
from marketplace.payments.schemes.exact import ExactScheme
from marketplace.payments.schemes.license import LicenseScheme
from marketplace.payments.schemes.metered import MeteredScheme
from marketplace.payments.schemes.registry import SchemeRegistry
from marketplace.payments.schemes.trial import TrialScheme, TrialTerms
from marketplace.runners import (
    OnnxRunner,
    OnnxTextRunner,
    OpenAIUpstreamRunner,
    Runner,
    TextRunner,
    UpstreamRunner,
)

__all__ = ["Services", "metered_owner", "preflight", "start_services"]

log = logging.getLogger("marketplace.daemon")
_SETTLEMENT_WAIT = 60.0  # seconds a paid `exact` call waits for its settlement to be mined


@dataclass
class Services:
    """The daemon's long-lived parts. `runners` maps a served model id to its runner."""

    settings: DaemonSettings
    account: LocalAccount
    state: ChainStateCache
    ledger: CreditLedger
    access: AccessNonces  # used license-access nonces, in the ledger's database
    holds: ExactHolds  # exact authorizations held against payers' balances
    trials: TrialCounter  # free trial calls used per (consumer, model), in the ledger's database
    schemes: SchemeRegistry  # what PaidCalls dispatches on
    channel: ChannelScheme  # also GET /v1/channels/{id}
    receipts: ReceiptSigner
    runners: dict[bytes, Runner]
    claimer: Claimer
    metrics: Metrics = field(default_factory=Metrics)
    text_runners: dict[bytes, TextRunner] = field(default_factory=dict)  # text models (OpenAI routes)

    async def aclose(self) -> None:
        await self.claimer.stop()
        for runner in self.runners.values():
            await runner.aclose()
        for text_runner in self.text_runners.values():
            await text_runner.aclose()
        await self.state.stop()
        await self.access.close()
        await self.trials.close()
        await self.holds.close()
        await self.ledger.close()


def _daemon_key(settings: DaemonSettings) -> LocalAccount:
    if settings.private_key is not None:
        return account_from_hex(settings.private_key.get_secret_value(), source="MARKETPLACE_PRIVATE_KEY")
    if settings.keystore is None:
        raise MissingKey("the daemon needs a key: set MARKETPLACE_KEYSTORE (with MARKETPLACE_PASSWORD) "
                         "or MARKETPLACE_PRIVATE_KEY")
    password = settings.password.get_secret_value() if settings.password else None
    return load_account(settings.keystore, ask_password=(lambda: password) if password is not None else None)


def _fetch_model(model: ModelInfo, settings: DaemonSettings) -> tuple[ModelMetadata, Path]:
    """The model's metadata and its artifact, fetched from IPFS and verified against their CIDs."""
    store = open_store(settings.ipfs_store, api=settings.ipfs_api, data_dir=settings.data_dir / "ipfs")
    with store, DagReader(store) as reader:
        metadata = parse_metadata(b"".join(reader.cat(CID(1, model.metadata_codec, model.metadata_digest))))
        artifact = CID(1, model.artifact_codec, model.artifact_digest)
        models_dir = settings.data_dir / "models"
        models_dir.mkdir(parents=True, exist_ok=True)
        target = Path(tempfile.mkdtemp(dir=models_dir)) / f"{artifact}.onnx"
        fetch_artifact(store, artifact, target)
    return metadata, target


def _load_runner(served: ServedModel, model: ModelInfo, settings: DaemonSettings) -> Runner | TextRunner:
    """Build the runner of one served model (blocking: fetches and verifies artifacts)."""
    config = served.runner
    if isinstance(config, UpstreamRunnerConfig):
        return UpstreamRunner(
            config.url,
            timeout=config.timeout_seconds,
            stream_timeout=config.stream_timeout_seconds,
            max_request_bytes=settings.max_request_bytes,
            max_response_bytes=config.max_response_bytes,
            artifact=model.artifact,  # what the registry names now: the daemon cannot look inside
        )
    if isinstance(config, OpenAIUpstreamRunnerConfig):
        return OpenAIUpstreamRunner(
            config.base_url,
            model=config.model,
            api_key=config.api_key.get_secret_value() if config.api_key else None,
            timeout=config.timeout_seconds,
            stream_timeout=config.stream_timeout_seconds,
            stream_idle_timeout=config.stream_idle_timeout_seconds,
            max_request_bytes=settings.max_request_bytes,
            context_tokens=config.context_tokens,
            artifact=model.artifact,
        )
    metadata, target = _fetch_model(model, settings)
    if isinstance(config, OnnxTextRunnerConfig):
        return OnnxTextRunner(target, artifact=model.artifact)
    return OnnxRunner(
        target,
        metadata.input_schema,
        model_name=metadata.name,
        model_version=str(model.artifact_version),
        max_request_bytes=settings.max_request_bytes,
        artifact=model.artifact,
    )


def metered_owner(settings: DaemonSettings) -> str:
    """The name of this daemon's metered calls in the shared store: its host and data directory
    (a restarted daemon settles the calls its dead processes left; replicas, each with its own
    data directory or host, never another's)."""
    return f"{socket.gethostname()}:{settings.data_dir.resolve()}"


def _schemes(
    settings: DaemonSettings, state: ChainStateCache, w3: Web3, deployment: Deployment, sender: Sender,
    ledger: CreditLedger, access: AccessNonces, holds: ExactHolds, trials: TrialCounter,
    text_runners: dict[bytes, TextRunner], account: LocalAccount,
) -> tuple[SchemeRegistry, ChannelScheme]:
    """Every payment scheme the daemon serves, registered by name (a new scheme is added here);
    and the channel scheme, which GET /v1/channels/{id} uses as well."""
    # one budget of chain look-ups per client: unknown channels and contract-wallet signatures
    lookups = ClientBuckets(settings.channel_lookup_burst, settings.channel_lookups_per_second)
    channel = ChannelScheme(
        state,
        min_remaining_seconds=settings.min_channel_lifetime_seconds,
        lookup_budget=lookups,
        ledger=ledger,
    )
    # exact answers a waiting client: its chain calls fail fast (2 s, no retries), through the
    # daemon's one sender (the claimer's nonces)
    exact = ExactScheme(state, sender.using(fail_fast_web3(settings.rpc_url), receipt_timeout=_SETTLEMENT_WAIT), holds,
                        search_from=deployment.start_block, lookup_budget=lookups)
    license = LicenseScheme(state, w3, access=access)
    state.on_license_change(license.invalidate)
    terms = {bytes.fromhex(served.model_id[2:]): TrialTerms(served.trial_calls, served.trial_token_required)
             for served in settings.models}
    trial = TrialScheme(state, deployment.addresses["ModelRegistry"], terms, access=access, counter=trials,
                        issuers=(account.address,))

    def exact_input(model_id: bytes) -> bool:
        return model_id in text_runners and text_runners[model_id].exact_input

    metered = MeteredScheme(channel, ledger, owner=metered_owner(settings), exact_input=exact_input)
    return SchemeRegistry((channel, exact, license, metered, trial)), channel


def preflight(settings: DaemonSettings) -> tuple[Web3, Deployment, LocalAccount]:
    """The checks that need no event loop: the node, the deployment on it, the daemon key.

    `marketplace serve` runs them before starting the server, so a bad setting is one line."""
    w3 = connect(settings.rpc_url, expected_chain_id=settings.chain_id)
    return w3, Deployment.load(settings.deployments_dir, w3), _daemon_key(settings)


async def start_services(settings: DaemonSettings) -> Services:
    """Connect to the chain and the ledger, load every served model, start the claimer."""
    w3, deployment, account = await asyncio.to_thread(preflight, settings)
    state = await ChainStateCache.connect(
        settings.rpc_url,
        deployment,
        poll_interval=settings.chain_poll_seconds,
        confirmations=settings.confirmations_on(deployment.chain_id),
    ).start()
    ledger = await asyncio.to_thread(open_ledger, settings.database_url)
    runners: dict[bytes, Runner] = {}
    text_runners: dict[bytes, TextRunner] = {}
    access: AccessNonces | None = None
    holds: ExactHolds | None = None
    trials: TrialCounter | None = None
    try:
        access = await asyncio.to_thread(open_access_nonces, settings.database_url)
        holds = await asyncio.to_thread(open_holds, settings.database_url)
        trials = await asyncio.to_thread(open_trial_counter, settings.database_url)
        await settle_unfinished(ledger, metered_owner(settings))  # metered calls a crash left in flight
        for served in settings.models:
            model_id = bytes.fromhex(served.model_id[2:])
            model = state.model(model_id)
            if model is None:
                deep = f" (at least {state.confirmations} blocks deep)" if state.confirmations else ""
                raise ConfigError(f"model {served.model_id} is not registered on chain {state.chain_id}{deep}")
            loaded = await asyncio.to_thread(_load_runner, served, model, settings)
            if isinstance(loaded, TextRunner):
                text_runners[model_id] = loaded
            else:
                runners[model_id] = loaded
            log.info("serving model %s with %r", served.model_id, loaded)
    except BaseException:
        for runner in runners.values():
            await runner.aclose()
        for text_runner in text_runners.values():
            await text_runner.aclose()
        await state.stop()
        for store in (access, holds, trials):
            if store is not None:
                await store.close()
        await ledger.close()
        raise
    policy = ClaimPolicy(
        min_unclaimed=settings.claim_min_unclaimed,
        expiry_margin_seconds=settings.claim_expiry_margin_seconds,
        interval_seconds=settings.claim_interval_seconds,
    )
    sender = Sender(w3, account)
    schemes, channel = _schemes(settings, state, w3, deployment, sender, ledger, access, holds, trials, text_runners,
                                account)
    services = Services(
        settings=settings,
        account=account,
        state=state,
        ledger=ledger,
        access=access,
        holds=holds,
        trials=trials,
        schemes=schemes,
        channel=channel,
        receipts=ReceiptSigner(account, ReceiptDomain(state.chain_id, deployment.addresses["ModelRegistry"])),
        runners=runners,
        text_runners=text_runners,
        claimer=Claimer(ledger, state, sender, policy),
    )
    services.claimer.start()
    return services
