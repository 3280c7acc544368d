"""Tracking endpoints (filled in next)."""

from __future__ import annotations

from studbook_server.mlflow._http import Endpoint

ENDPOINTS: list[Endpoint] = []
