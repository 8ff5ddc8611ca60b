"""Errors with IPFS artifacts.

    ArtifactError                IPFS artifacts
    ├── InvalidCid               text or bytes that are not a valid CID
    ├── ArtifactNotFound         a store does not have a block or file
    ├── ArtifactIntegrityError   bytes whose hash does not match their CID
    ├── StoreUnavailable         a Kubo API or gateway does not answer, or the store is busy
    ├── StoreError               a store answered, but with an error
    ├── CarFormatError           a malformed CAR file
    └── DagFormatError           a block that is not the dag-pb/UnixFS it should be
"""

from __future__ import annotations

from marketplace.errors import MarketplaceError

__all__ = [
    "ArtifactError",
    "ArtifactIntegrityError",
    "ArtifactNotFound",
    "CarFormatError",
    "DagFormatError",
    "InvalidCid",
    "StoreError",
    "StoreUnavailable",
]


class ArtifactError(MarketplaceError):
    """Something went wrong with an IPFS artifact."""


class InvalidCid(ArtifactError):
    def __init__(self, text: object, reason: str) -> None:
        self.text, self.reason = text, reason
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


class StoreError(ArtifactError):
    def __init__(self, where: str, action: str, message: str) -> None:
        self.where, self.action = where, action
        super().__init__(f"{where} failed to {action}: {message}")


class CarFormatError(ArtifactError):
    """A CAR file is malformed."""


class DagFormatError(ArtifactError):
    def __init__(self, cid: object, reason: str) -> None:
        self.cid = cid
        super().__init__(f"block {cid} is not valid UnixFS: {reason}")
