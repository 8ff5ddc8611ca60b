"""Daemon settings: environment variables (MARKETPLACE_*) and an optional TOML file.

Secrets are `SecretStr` (never printed or logged); a validator refuses placeholder secrets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from marketplace.chain.devkeys import DEV_CHAIN_ID
from marketplace.config import DEFAULT_RPC_URL, data_dir

__all__ = [
    "DaemonSettings",
    "OnnxRunnerConfig",
    "OnnxTextRunnerConfig",
    "OpenAIUpstreamRunnerConfig",
    "ServedModel",
    "UpstreamRunnerConfig",
]

_MIN_ADMIN_TOKEN = 24
_PLACEHOLDERS = {"", "changeme", "change-me", "password", "secret", "xxx", "todo", "0x"}
# Blocks a deposit, top-up or claim must be buried under before it counts, off the dev chain:
# on Ethereum mainnet and its L2s, reorgs of 1 block happen daily and of 2 rarely; 3 covers them
# for ~36 s of delay on a new channel (docs/chain-state.md).
DEFAULT_CONFIRMATIONS = 3


class OnnxRunnerConfig(BaseModel):
    """Run the model's ONNX artifact (fetched by CID, verified) with onnxruntime."""

    kind: Literal["onnx"] = "onnx"


class UpstreamRunnerConfig(BaseModel):
    """Forward calls to the provider's own model server (the only address the daemon dials)."""

    kind: Literal["upstream"] = "upstream"
    url: str
    timeout_seconds: float = 30.0
    stream_timeout_seconds: float = 600.0  # a streamed answer: the time spent waiting for the model server
    max_response_bytes: int = 16 * 1024 * 1024


class OnnxTextRunnerConfig(BaseModel):
    """A text model (OpenAI routes): the model's ONNX artifact is the built-in text model, run in-process."""

    kind: Literal["onnx-text"] = "onnx-text"


class OpenAIUpstreamRunnerConfig(BaseModel):
    """A text model (OpenAI routes) served by the provider's OpenAI-compatible server (vLLM, llama.cpp,
    Ollama): `base_url` without `/v1`; `model` replaces the consumer's `model` (the 0x id) upstream."""

    kind: Literal["openai"] = "openai"
    base_url: str
    model: str | None = None
    api_key: SecretStr | None = None
    timeout_seconds: float = 60.0  # until the response headers
    stream_timeout_seconds: float = 600.0  # the time spent waiting for the model server in all
    stream_idle_timeout_seconds: float = 60.0  # the longest silence between two chunks
    context_tokens: int = Field(0, ge=0, description="the model's context (prompt + output); 0: not known")

    @field_validator("api_key")
    @classmethod
    def _no_placeholder_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip().lower() in _PLACEHOLDERS:
            raise ValueError("is a placeholder; set the model server's real key or leave it unset")
        return value


RunnerConfig = Annotated[
    OnnxRunnerConfig | UpstreamRunnerConfig | OnnxTextRunnerConfig | OpenAIUpstreamRunnerConfig,
    Field(discriminator="kind"),
]
TEXT_RUNNERS = (OnnxTextRunnerConfig, OpenAIUpstreamRunnerConfig)  # served on the OpenAI routes


class ServedModel(BaseModel):
    model_id: str = Field(pattern=r"^0x[0-9a-fA-F]{64}$", description="ModelRegistry id (bytes32 hex)")
    runner: RunnerConfig = OnnxRunnerConfig()
    trial_calls: int = Field(0, ge=0, description="free calls per consumer (0: no trials; flat-priced models "
                                                  "only); docs/payment-protocol.md")
    trial_token_required: bool = Field(
        True, description="a trial needs a TrialToken the provider signed for the consumer (the sybil defence)"
    )

    @property
    def is_text(self) -> bool:
        """Served by a text runner, on the OpenAI routes (not on /infer)."""
        return isinstance(self.runner, TEXT_RUNNERS)


class DaemonSettings(BaseSettings):
    """Everything `marketplace serve` needs; see README "Running the daemon"."""

    model_config = SettingsConfigDict(env_prefix="MARKETPLACE_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(default_factory=data_dir, description="embedded IPFS store and model cache")
    rpc_url: str = DEFAULT_RPC_URL
    chain_id: int | None = None
    deployments_dir: Path = Field(default_factory=lambda: data_dir() / "deployments")
    database_url: str = Field(default_factory=lambda: f"sqlite:///{data_dir() / 'ledger.db'}")
    ipfs_store: Literal["local", "kubo", "gateway"] = "local"
    ipfs_api: str | None = None
    keystore: Path | None = None
    password: SecretStr | None = None
    private_key: SecretStr | None = None
    models: list[ServedModel] = Field(default_factory=list)
    public_url: str = "http://127.0.0.1:8000"
    min_channel_lifetime_seconds: int = 600
    max_request_bytes: int = 1024 * 1024
    claim_min_unclaimed: int = 10**18
    claim_expiry_margin_seconds: int = 3600
    claim_interval_seconds: float = 30.0
    chain_poll_seconds: float = 0.5
    admin_token: SecretStr | None = Field(None, description="opens /dashboard and /metrics (else: loopback only)")
    channel_lookup_burst: int = Field(10, ge=1, description="unknown-channel look-ups a client may make at once")
    channel_lookups_per_second: float = Field(2.0, gt=0, description="then this many per second, per client")
    confirmations: int | None = Field(
        default=None, ge=0, description="blocks deep before chain state counts; default 0 on 31337, else 3"
    )
    config_file: Path | None = None

    @field_validator("password", "private_key", "admin_token")
    @classmethod
    def _no_placeholder_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip().lower() in _PLACEHOLDERS:
            raise ValueError("is a placeholder; set a real secret or leave it unset")
        return value

    @field_validator("admin_token")
    @classmethod
    def _long_admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < _MIN_ADMIN_TOKEN:
            raise ValueError(f"is shorter than {_MIN_ADMIN_TOKEN} characters; make one with "
                             "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        return value

    def confirmations_on(self, chain_id: int) -> int:
        """The `confirmations` to use on `chain_id`: as set, else 0 on the dev chain, else 3."""
        if self.confirmations is not None:
            return self.confirmations
        return 0 if chain_id == DEV_CHAIN_ID else DEFAULT_CONFIRMATIONS

    @model_validator(mode="after")
    def _one_key_source(self) -> DaemonSettings:
        if self.keystore is not None and self.private_key is not None:
            raise ValueError("set either keystore or private_key for the daemon key, not both")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence: arguments, then MARKETPLACE_* variables, then the TOML file they name."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = init_settings().get("config_file") or env_settings().get("config_file")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)
