"""The offline batch indexer: ``python -m indexer --help``."""
