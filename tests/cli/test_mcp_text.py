"""`marketplace mcp`'s `complete` tool, driven by the official `mcp` client over stdio, against a real
daemon serving a text model priced per token (paid `metered`): the answer and the exact charge. Its
own module: the metered daemon runs on this module's event loop, apart from test_mcp's daemon."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from cli_fixtures import Cli
from daemon_fixtures import Listing
from metered_fixtures import PRICING, MeteredDaemon, serve_metered
from test_mcp import answer, stdio_server, tool_error

from marketplace.daemon.settings import DaemonSettings
from marketplace.tokens import format_tokens

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def metered(settings: DaemonSettings, w3: Any, contracts: Any, listing: Listing) -> AsyncIterator[MeteredDaemon]:
    """A text model priced per token (fake runner) on a real daemon of this event loop."""
    async for daemon in serve_metered(settings, w3, contracts, listing.provider):
        yield daemon


async def test_an_agent_completes_with_a_text_model_paying_exactly_the_tokens_used(
    cli: Cli, listing: Listing, metered: MeteredDaemon,
) -> None:
    metered.runner.reset(length=20)
    cli("account", "fund", "dev8", "--tokens", "10", "--eth", "0")
    cli("consumer", "open-channel", metered.model_hex, "--deposit", "0.1", "--expires", "7d", "--account", "dev8")
    async with stdio_server(cli, listing, metered.url, "dev8", "--per-call", "0.001") as client:
        answered = await answer(client, "complete", {"model_id": metered.model_hex, "prompt": "one two three",
                                                     "max_tokens": 5})
        assert answered["text"] == "w0 w1 w2 w3 w4 " and answered["scheme"] == "metered"
        assert answered["charge"] == format_tokens(PRICING.cost(3, 5))  # 3 prompt tokens, 5 answered
        assert answered["spending"]["spent_this_session"] == format_tokens(PRICING.cost(3, 5))
        assert "max_tokens" in await tool_error(client, "complete", {"model_id": metered.model_hex, "prompt": "x",
                                                                      "max_tokens": 0})
