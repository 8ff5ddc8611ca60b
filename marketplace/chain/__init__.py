"""Chain access: compiled contracts, a local Anvil, deployment, typed wrappers, event reading."""
