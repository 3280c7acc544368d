"""The GraphQL API, as `studbook reproduce` uses it: a run's record, its status, compareRuns.

Where: ``STUDBOOK_GRAPHQL_URL`` if set, else ``<url>/graphql`` for the Studbook ``url``
(``--url``, else ``STUDBOOK_URL``, else ``http://127.0.0.1:8080``), with the bearer token
``STUDBOOK_TOKEN``. Transport is urllib3, as the SDK's.
"""

from __future__ import annotations

import os
import time
from typing import Any, cast
from urllib.parse import urlsplit

import orjson

from studbook._config import DEFAULT_URL
from studbook._reproduce.errors import NotReproducible, ReproduceError

RECORD = """
query Record($id: ID!) {
  run(id: $id) {
    id project runId name status code environment
    params { key value }
    metrics { key value step }
    inputs {
      id dataset version role
      datasetVersion { uri digest sizeBytes source { uri repoPath } }
    }
    codeDiff { digest sizeBytes encoding text }
  }
}
"""

STATUS = """
query Status($id: ID!) {
  run(id: $id) { status error reproducedFrom { id } derivedFrom { id } }
}
"""

COMPARE = """
query Compare($ids: [ID!]!) {
  compareRuns(ids: $ids) {
    params { key values differs }
    metrics { key last differs }
    datasets { label present differs }
    code { gitCommit gitDirty differs }
    environments
  }
}
"""


def endpoint(url: str | None = None) -> tuple[str, str]:
    """(GraphQL endpoint, Studbook url) from ``--url`` and the environment."""
    base = (url or os.environ.get("STUDBOOK_URL") or DEFAULT_URL).rstrip("/")
    explicit = os.environ.get("STUDBOOK_GRAPHQL_URL")
    if explicit:
        return explicit, base
    if urlsplit(base).scheme not in ("http", "https"):
        raise ReproduceError(
            f"Studbook url {base!r} is not http(s): set STUDBOOK_GRAPHQL_URL to the GraphQL API "
            "(e.g. http://studbook-api:8080/graphql)"
        )
    return f"{base}/graphql", base


class Api:
    """Queries over HTTP; errors become :class:`ReproduceError` with the server's message."""

    def __init__(self, url: str, token: str | None, *, timeout_s: float = 30.0) -> None:
        import urllib3

        self.url = url
        self._headers = {"content-type": "application/json", "accept": "application/json"}
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5.0, read=timeout_s), retries=False
        )

    def query(self, text: str, variables: dict[str, Any]) -> dict[str, Any]:
        import urllib3

        body = orjson.dumps({"query": text, "variables": variables})
        try:
            response = self._http.request("POST", self.url, body=body, headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise ReproduceError(
                f"cannot reach Studbook's GraphQL API at {self.url}: {exc}"
            ) from exc
        try:
            doc = orjson.loads(response.data)
        except orjson.JSONDecodeError:
            doc = None
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if errors:
            first = errors[0]
            code = (first.get("extensions") or {}).get("code")
            hint = " (set STUDBOOK_TOKEN to a token with the read scope)" if code in (
                "UNAUTHENTICATED", "FORBIDDEN") else ""  # fmt: skip
            raise ReproduceError(f"Studbook answered: {first.get('message')}{hint}")
        if response.status != 200 or not isinstance(doc, dict):
            raise ReproduceError(
                f"Studbook's GraphQL API at {self.url} answered HTTP {response.status}"
            )
        return cast(dict[str, Any], doc["data"])

    def record(self, run: str) -> dict[str, Any]:
        found = self.query(RECORD, {"id": run})["run"]
        if found is None:
            raise NotReproducible(f"there is no run {run} (or the token may not read it)")
        return cast(dict[str, Any], found)

    def wait_finished(self, run: str, timeout_s: float) -> dict[str, Any]:
        """The re-run's status once it has finished (or the last seen one at the deadline)."""
        deadline = time.monotonic() + timeout_s
        seen: dict[str, Any] | None = None
        while True:
            seen = self.query(STATUS, {"id": run})["run"]
            if seen is not None and seen["status"] != "RUNNING":
                return seen
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if seen is None:
            raise ReproduceError(
                f"the re-run {run} has not reached Studbook within {timeout_s:g} s: did the "
                "script start a run with the SDK, or are its events waiting in the SDK's spool?"
            )
        return seen

    def compare(self, original: str, rerun: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.query(COMPARE, {"ids": [original, rerun]})["compareRuns"])
