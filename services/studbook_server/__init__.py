"""Studbook's services: ingest gateway, projector and GraphQL API."""

from __future__ import annotations

__version__ = "0.1.0"
