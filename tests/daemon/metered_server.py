"""`python metered_server.py CONFIG PORT MODEL_HEX`: the daemon of `marketplace serve --config
CONFIG` (same services, same start: unfinished metered calls settled), serving MODEL_HEX with the
tests' fake text runner (a 2,000-word answer, 100 words/s) at metered_fixtures.PRICING, since
neither text runners nor per-token prices come from settings and chain yet. For SIGKILL tests."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

import uvicorn
from metered_fixtures import PRICING, FakeTextRunner

from marketplace.cli.serve import load_settings
from marketplace.daemon.app import create_app
from marketplace.daemon.services import start_services


async def main(config: Path, port: int, model_hex: str) -> None:
    settings = load_settings(config)
    services = await start_services(settings)
    model_id = bytes.fromhex(model_hex[2:])
    model = services.state.model(model_id)
    assert model is not None, "the text model is not on chain"
    services.state._models[model_id] = dataclasses.replace(model, token_pricing=PRICING)
    runner = FakeTextRunner()
    runner.reset(length=2_000, delay=0.01)
    services.text_runners[model_id] = runner
    server = uvicorn.Server(uvicorn.Config(create_app(settings, services), host="127.0.0.1", port=port,
                                           log_level="warning"))
    try:
        await server.serve()
    finally:
        await services.aclose()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
