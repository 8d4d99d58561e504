"""chatshard: chat data to pre-masked Arrow shards (`preprocess`), checked (`check`), trained on (`train`)."""

__version__ = "0.1.0"
