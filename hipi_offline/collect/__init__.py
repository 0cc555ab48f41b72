"""Data collection: experts of the built-in environments write stores."""

from hipi_offline.collect.run import CollectConfig, CollectSummary, collect

__all__ = ["CollectConfig", "CollectSummary", "collect"]
