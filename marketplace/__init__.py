"""Pay-per-inference AI model marketplace on Ethereum."""

__version__ = "0.1.0"
