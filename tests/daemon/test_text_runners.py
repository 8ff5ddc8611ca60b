"""Served text models: the settings name the built-in text model or an OpenAI-compatible upstream,
and the daemon builds them into `Services.text_runners` (the OpenAI routes), not `runners` (/infer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from daemon_fixtures import Listing, list_spec, register_model, running_daemon
from eth_account.signers.local import LocalAccount
from pydantic import ValidationError
from web3 import Web3

from marketplace.daemon.settings import DaemonSettings, OpenAIUpstreamRunnerConfig, ServedModel
from marketplace.runners.onnx_text import OnnxTextRunner
from marketplace.runners.openai_upstream import OpenAIUpstreamRunner
from marketplace.runners.text import TextCall
from marketplace.runners.text_model import train_text_model

pytestmark = pytest.mark.anyio


def test_a_served_model_names_its_text_runner() -> None:
    model_id = "0x" + "ab" * 32
    text = ServedModel.model_validate({"model_id": model_id, "runner": {"kind": "onnx-text"}})
    upstream = ServedModel.model_validate({"model_id": model_id, "runner": {
        "kind": "openai", "base_url": "http://127.0.0.1:8080", "model": "llama-3", "api_key": "sk-real-key-123"}})
    plain = ServedModel.model_validate({"model_id": model_id})
    assert text.is_text and upstream.is_text and not plain.is_text
    assert isinstance(upstream.runner, OpenAIUpstreamRunnerConfig) and "sk-real" not in repr(upstream)
    with pytest.raises(ValidationError, match="placeholder"):
        OpenAIUpstreamRunnerConfig(base_url="http://127.0.0.1:8080", api_key="changeme")
    with pytest.raises(ValidationError):
        ServedModel.model_validate({"model_id": model_id, "runner": {"kind": "openai"}})  # no base_url


def test_served_models_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKETPLACE_MODELS", '[{"model_id": "0x' + "cd" * 32 + '", "runner": {"kind": "openai", '
                       '"base_url": "http://127.0.0.1:11434", "model": "llama3.2"}}]')
    served = DaemonSettings().models[0]
    assert isinstance(served.runner, OpenAIUpstreamRunnerConfig) and served.runner.model == "llama3.2"


async def test_the_daemon_builds_text_runners_beside_the_others(
    w3: Web3, contracts: Any, dev_accounts: list[LocalAccount], listing: Listing, settings: DaemonSettings,
    tmp_path: Path,
) -> None:
    provider = listing.provider
    text = list_spec(w3, contracts, provider, listing.data_dir, train_text_model(tmp_path / "text.onnx"))
    upstream_id = register_model(w3, contracts.registry, provider)
    served = [
        {"model_id": listing.model_hex},
        {"model_id": text.model_hex, "runner": {"kind": "onnx-text"}},
        {"model_id": "0x" + upstream_id.hex(), "runner": {"kind": "openai", "base_url": "http://127.0.0.1:9"}},
    ]
    async with running_daemon(settings.model_copy(update={"models": [ServedModel.model_validate(m)
                                                                     for m in served]})) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        assert set(services.runners) == {listing.model_id}
        assert set(services.text_runners) == {text.model_id, upstream_id}
        built_in, proxy = services.text_runners[text.model_id], services.text_runners[upstream_id]
        assert isinstance(built_in, OnnxTextRunner) and isinstance(proxy, OpenAIUpstreamRunner)
        model = services.state.model(text.model_id)
        assert built_in.artifact == model.artifact  # the artifact fetched from IPFS, verified, is what answers
        assert proxy.artifact == services.state.model(upstream_id).artifact
        stream = built_in.stream(TextCall("completion", {"prompt": "The dataset", "seed": 1}, 8))
        assert sum([chunk.output_tokens async for chunk in stream]) == stream.usage.output_tokens > 0
