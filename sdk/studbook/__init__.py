"""Studbook's Python SDK: report datasets, runs and models from training code."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
