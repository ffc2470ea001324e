"""Environments: datasets, splits, recommenders and the platform (no agents here)."""
