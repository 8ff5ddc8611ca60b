"""The pieces bench/daemon.py runs: the servers it measures (uvicorn factories, configured through
the environment so that spawned workers can re-import them), a local chain with the models listed,
and payers whose vouchers and EIP-3009 authorizations are signed ahead of time.

    python bench/daemon_setup.py _serve KIND PORT WORKERS      # what Server starts
"""

import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}'
ANSWER = b'{"label":[0],"probabilities":[[0.98,0.015,0.005]]}'
PRICE = 10**15
CHANNELS = 64


# -- the servers: uvicorn factories, configured through the environment (spawned workers re-import) --


async def upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The provider's model server: reads the body, answers a fixed small JSON."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]})
    await send({"type": "http.response.body", "body": ANSWER})


def unpaid_onnx_app() -> Any:
    """(a) The same runner the daemon uses, behind a plain FastAPI route, no payment."""
    from fastapi import FastAPI, Request, Response

    from marketplace.runners import OnnxRunner, RunnerRequest

    runner = OnnxRunner(Path(os.environ["BENCH_MODEL"]), json.loads(os.environ["BENCH_SCHEMA"]))
    app = FastAPI()

    @app.post("/infer")
    async def infer(request: Request) -> Response:
        answer = await runner.infer(RunnerRequest(await request.body(), request.headers.get("content-type", "")))
        return Response(answer.body, status_code=answer.status, media_type=answer.content_type)

    return app


def unpaid_proxy_app() -> Any:
    """(c) A FastAPI route forwarding to the upstream with the daemon's UpstreamRunner, no payment."""
    from fastapi import FastAPI, Request, Response

    from marketplace.runners import RunnerRequest, UpstreamRunner

    runner = UpstreamRunner(os.environ["BENCH_UPSTREAM"])
    app = FastAPI()

    @app.post("/infer")
    async def infer(request: Request) -> Response:
        call = RunnerRequest(await request.body(), request.headers.get("content-type", ""), request.headers)
        answer = await runner.infer(call)
        return Response(answer.body, status_code=answer.status, media_type=answer.content_type)

    return app


def openai_upstream_app() -> Any:
    """The fake OpenAI-compatible model server of the tests (BENCH_TOKENS tokens at BENCH_RATE per s)."""
    from tests.support.openai_upstream import FakeUpstream, create_app

    return create_app(FakeUpstream(tokens=int(os.environ["BENCH_TOKENS"]), rate=float(os.environ["BENCH_RATE"])))


def text_relay_app() -> Any:
    """(c) in stream.py: the daemon's text runner and SSE writes without payment (BENCH_UPSTREAM):
    chunks re-encoded and written one batch per upstream read, as the daemon does. It measures the
    extra hop itself, to tell it apart from what paying adds."""
    import orjson

    from marketplace.runners.openai_upstream import OpenAIUpstreamRunner
    from marketplace.runners.text import TextCall

    runner = OpenAIUpstreamRunner(os.environ["BENCH_UPSTREAM"])

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await runner.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
        if scope["path"] != "/v1/chat/completions":  # Server.wait's probe
            await send(start)
            await send({"type": "http.response.body", "body": b""})
            return
        request = orjson.loads(body)
        stream = runner.stream(TextCall("chat", request, int(request["max_tokens"])))
        await send(start)
        try:
            async for batch in stream.batches():
                events = b"".join(b"data: " + orjson.dumps(chunk.data) + b"\n\n" for chunk in batch)
                await send({"type": "http.response.body", "body": events, "more_body": True})
        finally:
            await stream.aclose()
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    return app


def paid_app() -> Any:
    """(b), (d), (e): the daemon itself, settings from MARKETPLACE_CONFIG_FILE and the key variable."""
    from marketplace.daemon.app import create_app
    from marketplace.daemon.settings import DaemonSettings

    return create_app(DaemonSettings())


def serve(kind: str, port: int, workers: int) -> None:
    import uvicorn

    sys.path.insert(0, str(ROOT))
    factory = kind != "upstream_app"
    uvicorn.run(f"daemon_setup:{kind}", factory=factory, app_dir=str(ROOT / "bench"), host="127.0.0.1", port=port,
                workers=workers, loop="uvloop", http="httptools", access_log=False, log_level="warning",
                lifespan="on" if factory else "off")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One server process (and its uvicorn workers), ready when `probe` answers 2xx/402.

    `tree` is the checkout whose code it runs: this one, or a baseline (another commit's tree,
    e.g. from `git worktree add` or `git archive`) measured side by side.
    """

    def __init__(self, kind: str, workers: int = 1, env: dict[str, str] | None = None, tree: Path = ROOT) -> None:
        self.kind, self.workers, self.port = kind, workers, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = os.environ | (env or {}) | ({"PYTHONPATH": str(tree)} if tree != ROOT else {})
        self.process = subprocess.Popen(
            [sys.executable, str(tree / "bench" / "daemon_setup.py"), "_serve", kind, str(self.port), str(workers)],
            cwd=tree, stdin=subprocess.DEVNULL, env=env)

    def wait(self, probe: str, timeout: float = 90.0) -> "Server":
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the {self.kind} server exited with {self.process.returncode}")
            try:
                if httpx.post(self.url + probe, content=BODY, headers={"content-type": "application/json"},
                              timeout=2).status_code in (200, 402):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the {self.kind} server did not answer within {timeout:g} s")

    def cpu_seconds(self) -> float:
        """CPU time of the server process and every process below it (uvicorn's workers)."""
        tree, stats = {self.process.pid}, {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rpartition(")")[2].split()
                except OSError:
                    continue
                stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])))
        grew = True
        while grew:
            below = {pid for pid, (parent, _) in stats.items() if parent in tree} - tree
            grew, tree = bool(below), tree | below
        return sum(stats[pid][1] for pid in tree if pid in stats) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- the chain, the models, the payers --------------------------------------------------------------


class Market:
    """A local Anvil with the contracts, the iris model (ONNX, in IPFS) and an upstream model listed."""

    def __init__(self, workdir: Path) -> None:
        from web3 import Web3

        from marketplace.chain.anvil import Anvil
        from marketplace.chain.deploy import deploy_contracts
        from marketplace.chain.devkeys import dev_accounts
        from marketplace.ipfs import PROFILES
        from marketplace.ipfs.artifacts import add_bytes, add_path, open_store
        from marketplace.metadata import ModelMetadata
        from marketplace.runners.demo_models import train_iris_classifier

        self.anvil = Anvil().start()
        self.w3 = Web3(Web3.HTTPProvider(self.anvil.url))
        self.owner, self.provider, self.payer, self.exact_payer = dev_accounts(4)
        self.deployment = deploy_contracts(self.w3, self.owner)
        self.token, self.registry, self.channels = (self.deployment.contract(self.w3, name)
                                                    for name in ("MarketToken", "ModelRegistry", "PaymentChannels"))
        self.data_dir = workdir / "data"
        self.spec = train_iris_classifier(workdir / "iris.onnx")
        with open_store("local", data_dir=self.data_dir / "ipfs") as store:
            artifact = add_path(store, self.spec.path, PROFILES["kubo-v1"]).cid
            meta = add_bytes(store, ModelMetadata.model_validate(self.spec.metadata()).to_json_bytes(),
                             PROFILES["kubo-v1"]).cid
        self.iris = self.register((meta.codec, meta.digest), (artifact.codec, artifact.digest))
        self.proxied = self.register((0x55, b"\x01" * 32), (0x55, b"\x02" * 32))
        self.deployments_dir = workdir / "deployments"
        self.deployment.save(self.deployments_dir)

    def send(self, account: Any, fn: Any) -> Any:
        from marketplace.chain.transactions import Sender

        return Sender(self.w3, account).transact(fn)

    def register(self, metadata: tuple[int, bytes], artifact: tuple[int, bytes]) -> bytes:
        salt = secrets.token_bytes(32)
        self.send(self.provider, self.registry.functions.registerModel(
            salt, self.provider.address, PRICE, metadata, artifact, "http://127.0.0.1/bench"))
        return bytes(self.registry.functions.modelIdOf(self.provider.address, salt).call())

    def register_metered(self, per_input_token: int, per_output_token: int, max_output_tokens: int = 0) -> bytes:
        """A text model priced per token (the per-call price is PRICE), served by an OpenAI upstream."""
        model_id = self.register((0x55, secrets.token_bytes(32)), (0x55, secrets.token_bytes(32)))
        self.send(self.provider, self.registry.functions.setTokenPrices(
            model_id, (per_input_token, per_output_token, max_output_tokens)))
        return model_id

    def open_channels(self, model_id: bytes, count: int, deposit: int) -> list[int]:
        self.send(self.owner, self.token.functions.mint(self.payer.address, count * deposit))
        self.send(self.payer, self.token.functions.approve(self.channels.address, count * deposit))
        expiry = self.w3.eth.get_block("latest")["timestamp"] + 7 * 86_400
        ids = []
        for _ in range(count):
            terms = (self.payer.address, self.payer.address, self.provider.address, model_id,
                     int.from_bytes(secrets.token_bytes(8), "big"))
            self.send(self.payer, self.channels.functions.open(terms, deposit, expiry))
            ids.append(int(self.channels.functions.channelIdOf(terms).call()))
        return ids

    def daemon_config(self, path: Path, database_url: str, upstream: str,
                      text: tuple[bytes, str] | None = None) -> Path:
        """The daemon's settings; `text` = (metered model, base URL of its OpenAI upstream) adds it."""
        models = [f'[[models]]\nmodel_id = "0x{self.iris.hex()}"',
                  f'[[models]]\nmodel_id = "0x{self.proxied.hex()}"\n'
                  f'runner = {{ kind = "upstream", url = "{upstream}" }}']
        if text is not None:
            models.append(f'[[models]]\nmodel_id = "0x{text[0].hex()}"\n'
                          f'runner = {{ kind = "openai", base_url = "{text[1]}" }}')
        path.write_text("\n".join([
            f'data_dir = "{self.data_dir}"', f'rpc_url = "{self.anvil.url}"', "chain_id = 31337",
            f'deployments_dir = "{self.deployments_dir}"', f'database_url = "{database_url}"',
            "claim_interval_seconds = 3600.0", "claim_min_unclaimed = 9000000000000000000", *models]) + "\n")
        return path


class Vouchers:
    """Pre-signed PAYMENT-SIGNATURE headers for one model's channels, amounts always increasing."""

    def __init__(self, market: Market, model_id: bytes, channels: list[int], requirements: dict[str, Any]) -> None:
        from marketplace.payments.eip712 import KeySigner
        from marketplace.payments.vouchers import VoucherDomain

        self.domain = VoucherDomain(31337, market.channels.address)
        self.key = KeySigner(market.payer)
        self.channels, self.requirements = channels, requirements
        self.issued = dict.fromkeys(channels, 0)  # highest multiple of the price signed per channel

    def header(self, channel_id: int, amount: int, cap: int | None = None) -> str:
        """The voucher for `amount` on `channel_id`; with `cap`, a metered call's (the most it may cost)."""
        signature = self.key.sign(self.domain.digest(channel_id, amount))
        payload = {"channelId": f"0x{channel_id:064x}", "amount": str(amount), "signature": "0x" + signature.hex()}
        if cap is not None:
            payload["cap"] = str(cap)
        document = {"x402Version": 2, "accepted": self.requirements, "payload": payload}
        return base64.b64encode(json.dumps(document, separators=(",", ":")).encode()).decode()

    def batch(self, count: int) -> list[str]:
        """`count` distinct vouchers: request i on channel i mod n, one price above that channel's last."""
        headers = []
        for i in range(count):
            channel_id = self.channels[i % len(self.channels)]
            self.issued[channel_id] += 1
            headers.append(self.header(channel_id, self.issued[channel_id] * PRICE))
        return headers

    def preauthorizing(self, calls: int) -> list[str]:
        """One voucher covering `calls` more calls on the first channel, sent on every request."""
        channel_id = self.channels[0]
        self.issued[channel_id] += calls
        return [self.header(channel_id, self.issued[channel_id] * PRICE)]


def exact_headers(market: Market, requirements: dict[str, Any], count: int) -> list[str]:
    """`count` EIP-3009 authorizations of the price to the provider, each with a fresh nonce."""
    from marketplace.payments.eip712 import TRANSFER_WITH_AUTHORIZATION, Domain, KeySigner

    market.send(market.owner, market.token.functions.mint(market.exact_payer.address, count * PRICE))
    domain, key = Domain("Market Token", "1", 31337, market.token.address), KeySigner(market.exact_payer)
    payer, payee = market.exact_payer.address, market.provider.address
    valid_before = market.w3.eth.get_block("latest")["timestamp"] + 3600
    headers = []
    for _ in range(count):
        nonce = secrets.token_bytes(32)
        digest = domain.digest(TRANSFER_WITH_AUTHORIZATION, payer, payee, PRICE, 0, valid_before, nonce)
        payload = {"signature": "0x" + key.sign(digest).hex(),
                   "authorization": {"from": payer, "to": payee, "value": str(PRICE), "validAfter": "0",
                                     "validBefore": str(valid_before), "nonce": "0x" + nonce.hex()}}
        document = {"x402Version": 2, "accepted": requirements, "payload": payload}
        headers.append(base64.b64encode(json.dumps(document, separators=(",", ":")).encode()).decode())
    return headers


# -- PostgreSQL and the 402 --------------------------------------------------------------------------

_DATABASE = f"bench_daemon_{os.getpid()}"


def postgres_database(admin_url: str, suffix: str = "") -> str | None:
    """A fresh database on the server at `admin_url` (None, with a note, if it does not answer)."""
    if not admin_url:
        return None
    import psycopg

    name = f"{_DATABASE}_{suffix}" if suffix else _DATABASE
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as error:
        print(f"PostgreSQL at {admin_url} unusable ({error}): its run is skipped", file=sys.stderr)
        return None
    base, _, query = admin_url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


def drop_postgres_databases(admin_url: str) -> None:
    if admin_url:
        import psycopg

        try:
            with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
                for name in (_DATABASE, f"{_DATABASE}_baseline"):
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error:
            pass


def requirements_of(server: Server, path: str, scheme: str, body: bytes = BODY) -> dict[str, Any]:
    import httpx

    from marketplace.payments.x402 import parse_payment_required

    required = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"}, timeout=10)
    accepts = parse_payment_required(required.headers["PAYMENT-REQUIRED"]).accepts
    return next(r for r in accepts if r.scheme == scheme).to_json()


if __name__ == "__main__" and sys.argv[1:2] == ["_serve"]:
    serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
