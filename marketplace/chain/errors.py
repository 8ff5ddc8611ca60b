"""Errors talking to the chain.

    ChainError                   talking to the chain
    ├── RpcUnreachable           no JSON-RPC node answers at the URL
    ├── WrongChain               the node serves another chain id than expected
    ├── MissingKey               no signing key was provided or it could not be decrypted
    ├── InsufficientFunds        the sender cannot pay for gas or value
    ├── ContractReverted         a call or transaction reverted (custom error decoded)
    ├── DeploymentNotFound       no deployment record for a chain id
    ├── ChainUnavailable         the node does not answer now (the cached state still serves)
    ├── ChannelUnconfirmed       a channel opened, but not yet deep enough
    ├── LogQueryRefused          eth_getLogs refused even for a one-block range
    └── NotFoundOnChain          no model, channel, offer or license with that id
"""

from __future__ import annotations

from marketplace.errors import MarketplaceError

__all__ = [
    "ChainError",
    "ChainUnavailable",
    "ChannelUnconfirmed",
    "ContractReverted",
    "DeploymentNotFound",
    "InsufficientFunds",
    "LogQueryRefused",
    "MissingKey",
    "NotFoundOnChain",
    "RpcUnreachable",
    "WrongChain",
]


class ChainError(MarketplaceError):
    """Something went wrong while talking to the chain."""


class RpcUnreachable(ChainError):
    def __init__(self, url: str, reason: str = "") -> None:
        self.url = url
        super().__init__(f"no Ethereum JSON-RPC node answers at {url}" + (f" ({reason})" if reason else ""))


class WrongChain(ChainError):
    def __init__(self, url: str, expected: int, actual: int) -> None:
        self.expected, self.actual = expected, actual
        super().__init__(f"the node at {url} serves chain id {actual}, expected {expected}")


class MissingKey(ChainError):
    """No usable signing key."""


class InsufficientFunds(ChainError):
    def __init__(self, address: str, needed: int, balance: int, what: str = "gas") -> None:
        self.address, self.needed, self.balance = address, needed, balance
        super().__init__(
            f"account {address} holds {balance} wei but needs about {needed} wei for {what}"
        )


class ContractReverted(ChainError):
    def __init__(self, contract: str, function: str, error: str, values: dict[str, object] | None = None) -> None:
        self.contract, self.function, self.error, self.values = contract, function, error, values or {}
        shown = ", ".join(f"{k}={v}" for k, v in self.values.items())
        super().__init__(f"{function} on {contract} reverted: {error}({shown})")


class DeploymentNotFound(ChainError):
    def __init__(self, chain_id: int, path: str) -> None:
        self.chain_id = chain_id
        super().__init__(f"no deployment for chain id {chain_id} (looked for {path}); deploy first")


class ChainUnavailable(ChainError):
    """The node did not answer (refused, timed out, HTTP error): cached state still serves, reads fail."""

    def __init__(self, url: str, action: str, reason: str) -> None:
        self.url, self.action, self.reason = url, action, reason
        super().__init__(f"cannot {action}: the chain node at {url} is unavailable ({reason})")


class ChannelUnconfirmed(ChainError):
    """The channel is opened on chain, but not yet as many blocks deep as the daemon requires."""

    def __init__(self, channel_id: int, confirmations: int) -> None:
        self.channel_id, self.confirmations = channel_id, confirmations
        super().__init__(
            f"channel {channel_id:#x} is opened but not yet {confirmations} blocks deep; pay again once it is"
        )


class LogQueryRefused(ChainError):
    """eth_getLogs was refused even for the smallest block range."""

    def __init__(self, from_block: int, to_block: int, message: str) -> None:
        self.from_block, self.to_block = from_block, to_block
        super().__init__(f"the node refused eth_getLogs for blocks {from_block}..{to_block}: {message}")


class NotFoundOnChain(ChainError):
    def __init__(self, what: str, ident: object, chain_id: int) -> None:
        self.what, self.ident, self.chain_id = what, ident, chain_id
        super().__init__(f"no {what} {ident} on chain {chain_id}")
