"""`marketplace mcp`: an MCP server (the official `mcp` SDK, stdio or streamable HTTP) whose tools let
an agent search the catalog, read a model's schema and price, and call paid models within the
spending limits the user sets (per call, per day, in total), the spend reported with every call.

The tools are `agent_tools.Toolbox`'s; this module registers them on an `MCPServer` and turns each
`MarketplaceError` (a refused payment, a spent budget, an unknown model, bad JSON) into a tool error
the agent reads, never a traceback. Over HTTP it listens on loopback only: whoever reaches it spends
the user's tokens. `mcp` is imported inside the command (`marketplace --help` stays fast).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from marketplace.cli.account import AccountOption, DeploymentsDirOption, RpcUrlOption, err, open_session
from marketplace.cli.ipfs import ApiOption, DataDirOption, StoreOption
from marketplace.cli.spend import PerCallOption, PerDayOption, TotalOption, limits_of
from marketplace.config import DEFAULT_RPC_URL
from marketplace.errors import ConfigError, MarketplaceError
from marketplace.ipfs import StoreKind

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from marketplace.cli.agent_tools import Toolbox

__all__ = ["create_server", "mcp"]

_T = TypeVar("_T")
_INSTRUCTIONS = (
    "Tools of a pay-per-inference model marketplace. Find a model with search_models, read its input schema "
    "and price with describe_model, then call_model (or complete, for text models priced per token). Calls "
    "are paid from the user's tokens within the limits spending() shows; a call they do not allow is refused."
)


async def _run(tool: Callable[[], _T]) -> _T:
    """Run a blocking tool on a worker thread; a MarketplaceError or bad JSON becomes a tool error."""
    import anyio.to_thread
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        return await anyio.to_thread.run_sync(tool)
    except MarketplaceError as error:
        raise ToolError(f"{type(error).__name__}: {error}") from None
    except json.JSONDecodeError as error:
        raise ToolError(f"input is not JSON: {error}") from None


def create_server(tools: Toolbox) -> MCPServer:
    """An MCP server whose tools are `tools`' (each run on a worker thread)."""
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("marketplace", instructions=_INSTRUCTIONS)

    @server.tool()
    async def search_models(query: str = "", tag: str | None = None, max_price: str | None = None) -> dict[str, Any]:
        """Search the catalog: active models whose name, description or tags contain every word of
        `query`, with tag `tag`, priced at most `max_price` MKT per call (e.g. "0.01")."""
        return await _run(partial(tools.search_models, query, tag, max_price))

    @server.tool()
    async def describe_model(model_id: str) -> dict[str, Any]:
        """One model (0x + 64 hex digits): name, description, input and output JSON schemas, an example
        input, its price (MKT per call; per token for text models) and its endpoint."""
        return await _run(partial(tools.describe_model, model_id))

    @server.tool()
    async def call_model(model_id: str, input: dict[str, Any] | str) -> dict[str, Any]:
        """Call a model once, paying its price from the user's tokens: `input` is the JSON object its
        input_schema describes. Returns the model's output, the charge (MKT) and the spending so far.
        Refused, with nothing paid, when the spending limits do not allow it."""
        return await _run(partial(tools.call_model, model_id, input))

    @server.tool()
    async def complete(model_id: str, prompt: str, max_tokens: int = 256) -> dict[str, Any]:
        """Ask a text model (priced per token) to answer `prompt` in at most `max_tokens` tokens; paid
        per token used. Returns the text, the whole answer, the charge (MKT) and the spending so far."""
        return await _run(partial(tools.complete, model_id, prompt, max_tokens))

    @server.tool()
    async def spending() -> dict[str, Any]:
        """What was spent (MKT) today (UTC), in total and in this session, and the spending limits."""
        return await _run(tools.spending)

    return server


def mcp(
    http: Annotated[bool, typer.Option("--http", help="Serve streamable HTTP on 127.0.0.1 (default: stdio).")]
    = False,
    port: Annotated[int, typer.Option(help="Port of --http (its endpoint is http://127.0.0.1:PORT/mcp).")] = 8403,
    daemon: Annotated[str | None, typer.Option(
        help="Call every model on this daemon (default: the endpoint registered for each model).")] = None,
    per_call: PerCallOption = None,
    per_day: PerDayOption = None,
    total: TotalOption = None,
    account: AccountOption = None,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployments_dir: DeploymentsDirOption = None,
    store: StoreOption = StoreKind.LOCAL,
    api: ApiOption = None,
    data_dir_: DataDirOption = None,
) -> None:
    """Serve the marketplace to an AI agent over MCP: tools to search models, read their schema and
    price, and call them paying from your channels within your spending limits.

    Claude Desktop, an IDE or any MCP client runs `marketplace mcp --account NAME --total 1` (stdio);
    `--http` serves http://127.0.0.1:8403/mcp instead. The limits (flags over `consumer limits`) are the
    boundary of what an agent can spend: set --total. Log lines go to stderr."""
    from marketplace.cli.agent_tools import Toolbox
    from marketplace.client import ChannelStore, SpendingBook

    if daemon is not None and not daemon.startswith(("http://", "https://")):
        raise ConfigError(f"--daemon must be an http:// or https:// URL, got {daemon!r}")
    session = open_session(rpc_url, account, deployments_dir=deployments_dir)
    channels = ChannelStore()
    with SpendingBook(channels.path) as book:
        chosen = limits_of(book, per_call, per_day, total)
    tools = Toolbox(session, channels, chosen, daemon=daemon, ipfs=store, api=api, data_dir=data_dir_)
    server = create_server(tools)
    assert session.market.account is not None
    where = f"http://127.0.0.1:{port}/mcp" if http else "stdio"
    err.print(f"MCP server for {session.market.account.address} on {where}; limits: "
              + ", ".join(f"{name} {value or 'none'}" for name, value in tools.spending()["limits"].items()))
    try:
        if http:
            server.run("streamable-http", host="127.0.0.1", port=port)
        else:
            server.run("stdio")
    finally:
        tools.close()
        channels.close()
