"""Connect to a JSON-RPC node and fail with one clear line when it is not the expected one."""

from __future__ import annotations

import requests
from web3 import Web3
from web3.exceptions import Web3Exception

from marketplace.chain.errors import RpcUnreachable, WrongChain
from marketplace.errors import ConfigError

__all__ = ["connect", "fail_fast_web3"]


def connect(url: str, *, expected_chain_id: int | None = None, timeout: float = 10.0) -> Web3:
    """A Web3 for `url`; raises RpcUnreachable or WrongChain instead of hanging or tracebacks."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"RPC URL must start with http:// or https://, got {url!r}")
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
    try:
        chain_id = w3.eth.chain_id
    except (requests.RequestException, OSError, Web3Exception, ValueError) as error:
        raise RpcUnreachable(url, type(error).__name__) from None
    if expected_chain_id is not None and chain_id != expected_chain_id:
        raise WrongChain(url, expected_chain_id, chain_id)
    return w3


def fail_fast_web3(url: str, *, timeout: float = 2.0) -> Web3:
    """A Web3 whose every request gives up after `timeout` seconds, without retries: for calls a
    client is waiting on, which must answer "chain unavailable" quickly rather than minutes late."""
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None))
