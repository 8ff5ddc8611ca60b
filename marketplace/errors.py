"""The root of every error the marketplace raises on purpose; each package owns its subtree.

    MarketplaceError
    ├── ConfigError           bad settings or input given by the user (here)
    │   └── AccountError      a local keystore account cannot be used (marketplace.accounts)
    ├── ToolchainError        a pinned tool (anvil, solc) is missing or failed (marketplace.config)
    ├── ChainError            talking to the chain (marketplace.chain.errors)
    ├── ArtifactError         IPFS artifacts (marketplace.ipfs.errors)
    ├── RunnerError           a model call failed; not charged (marketplace.runners.errors)
    ├── PaymentError          x402 payments, receipts (marketplace.payments.errors)
    │   ├── ...               the credit ledger (marketplace.payments.ledger.errors)
    │   └── ClientPaymentError  the consumer SDK could not pay (marketplace.client.errors)
    └── ClientError           the consumer SDK talking to a daemon (marketplace.client.errors)

Every message is built from the values involved, so one line tells the user what went wrong.
Only the daemon maps errors to HTTP (marketplace.daemon.errors) and only the CLI to messages
on the terminal (marketplace.cli.console).
"""

from __future__ import annotations

__all__ = ["ConfigError", "MarketplaceError"]


class MarketplaceError(Exception):
    """Root of every error raised on purpose by the marketplace."""


class ConfigError(MarketplaceError):
    """A setting or an argument given by the user is invalid."""
