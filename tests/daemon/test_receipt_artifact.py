"""A receipt names the artifact that actually answered: after `provider update-model` publishes a
new artifact on chain, the running daemon still runs the one it loaded, and its receipts say so
(and `marketplace receipt verify` accepts them)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from daemon_fixtures import PRICE, Channel, Listing, pay_header, requirements_of
from typer.testing import CliRunner
from web3 import Web3

from marketplace.chain.transactions import Sender
from marketplace.cli.main import app as cli
from marketplace.ipfs import CID
from marketplace.payments.x402 import parse_payment_response

pytestmark = pytest.mark.anyio
BODY = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}).encode()
NEW_ARTIFACT = (0x55, bytes(range(100, 132)))  # published on chain, never loaded by the daemon


async def test_after_a_new_artifact_is_published_receipts_still_name_the_loaded_one(
    w3: Web3, contracts: Any, daemon: httpx.AsyncClient, listing: Listing, open_channel: Callable[..., Channel],
    tmp_path: Path,
) -> None:
    state = daemon.app.state.services.state  # type: ignore[attr-defined]
    loaded = state.model(listing.model_id)
    Sender(w3, listing.provider).transact(contracts.registry.functions.publishArtifact(listing.model_id, NEW_ARTIFACT))
    deadline = time.monotonic() + 20
    while state.model(listing.model_id).artifact_version == loaded.artifact_version:  # the daemon saw the event
        assert time.monotonic() < deadline, "the daemon never saw ArtifactPublished"
        await anyio.sleep(0.05)
    assert state.model(listing.model_id).artifact_digest == NEW_ARTIFACT[1]

    path = f"/v1/models/{listing.model_hex}/infer"
    channel = open_channel()
    requirements = requirements_of(await daemon.post(path, content=BODY), "channel")
    response = await daemon.post(path, content=BODY, headers={
        "content-type": "application/json", "PAYMENT-SIGNATURE": pay_header(requirements, channel.voucher(PRICE))})
    assert response.status_code == 200, response.text
    receipt = parse_payment_response(response.headers["PAYMENT-RESPONSE"]).extra["receipt"]
    message = receipt["message"]
    assert (message["artifactDigest"], message["artifactVersion"]) == (
        "0x" + loaded.artifact_digest.hex(), loaded.artifact_version)  # what ran, not what the chain now names
    assert message["amount"] == str(PRICE) and message["cumulative"] == str(PRICE)

    card = (await daemon.get(f"/v1/models/{listing.model_hex}")).json()
    assert card["artifact_version"] == loaded.artifact_version + 1  # the registry's latest ...
    assert (card["served_artifact_cid"], card["served_artifact_version"]) == (  # ... and what answers here
        str(CID(1, loaded.artifact_codec, loaded.artifact_digest)), loaded.artifact_version)

    files = {"receipt": json.dumps(receipt), "request": BODY.decode(), "response": response.text}
    for name, text in files.items():
        (tmp_path / f"{name}.json").write_text(text)
    verified = CliRunner().invoke(cli, ["receipt", "verify", str(tmp_path / "receipt.json"),
                                        "--signer", listing.provider.address,
                                        "--request", str(tmp_path / "request.json"),
                                        "--response", str(tmp_path / "response.json")])
    assert verified.exit_code == 0, verified.output
    assert f"artifact v{loaded.artifact_version}" in verified.output and "bodies match" in verified.output
