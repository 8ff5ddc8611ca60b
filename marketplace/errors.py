"""Every error the marketplace raises, under one root.

    MarketplaceError
    ├── ConfigError                  bad settings or input given by the user
    ├── ChainError                   talking to the chain
    │   ├── RpcUnreachable           no JSON-RPC node answers at the URL
    │   ├── WrongChain               the node serves another chain id than expected
    │   ├── MissingKey               no signing key was provided or it could not be decrypted
    │   ├── InsufficientFunds        the sender cannot pay for gas or value
    │   ├── ContractReverted         a call or transaction reverted (custom error decoded)
    │   └── DeploymentNotFound       no deployment record for a chain id
    ├── ToolchainError               a pinned external tool (anvil, solc) is missing or failed
    └── ArtifactError                IPFS artifacts
        ├── InvalidCid               text or bytes that are not a valid CID
        ├── ArtifactNotFound         a store does not have a block or file
        ├── ArtifactIntegrityError   bytes whose hash does not match their CID
        ├── StoreUnavailable         a Kubo API or gateway does not answer
        └── CarFormatError           a malformed CAR file

Every message is built from the values involved, so one line tells the user what went wrong.
"""

from __future__ import annotations

__all__ = [
    "MarketplaceError",
    "ConfigError",
    "ChainError",
    "RpcUnreachable",
    "WrongChain",
    "MissingKey",
    "InsufficientFunds",
    "ContractReverted",
    "DeploymentNotFound",
    "ToolchainError",
    "ArtifactError",
    "InvalidCid",
    "ArtifactNotFound",
    "ArtifactIntegrityError",
    "StoreUnavailable",
    "CarFormatError",
]


class MarketplaceError(Exception):
    """Root of every error raised on purpose by the marketplace."""


class ConfigError(MarketplaceError):
    """A setting or an argument given by the user is invalid."""


# --- chain -----------------------------------------------------------------------------------


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
    def __init__(self, contract: str, function: str, error: str, args: dict[str, object] | None = None) -> None:
        self.contract, self.function, self.error, self.args = contract, function, error, args or {}
        shown = ", ".join(f"{k}={v}" for k, v in self.args.items())
        super().__init__(f"{contract}.{function} reverted: {error}({shown})")


class DeploymentNotFound(ChainError):
    def __init__(self, chain_id: int, path: str) -> None:
        self.chain_id = chain_id
        super().__init__(f"no deployment for chain id {chain_id} (looked for {path}); deploy first")


class ToolchainError(MarketplaceError):
    """A pinned external tool (anvil, solc, node) is missing or failed."""


# --- IPFS artifacts --------------------------------------------------------------------------


class ArtifactError(MarketplaceError):
    """Something went wrong with an IPFS artifact."""


class InvalidCid(ArtifactError):
    def __init__(self, text: object, reason: str) -> None:
        self.text = text
        super().__init__(f"invalid CID {text!r}: {reason}")


class ArtifactNotFound(ArtifactError):
    def __init__(self, cid: object, where: str) -> None:
        self.cid = cid
        super().__init__(f"{cid} not found in {where}")


class ArtifactIntegrityError(ArtifactError):
    def __init__(self, cid: object, actual: str, where: str) -> None:
        self.cid = cid
        super().__init__(f"bytes from {where} for {cid} hash to {actual}: refused")


class StoreUnavailable(ArtifactError):
    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        super().__init__(f"{where} is unavailable: {reason}")


class CarFormatError(ArtifactError):
    """A CAR file is malformed."""
