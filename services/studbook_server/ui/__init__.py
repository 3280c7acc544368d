"""The web UI: the bundle that `web/` builds (committed in `static/`), served at `/` by the `api`
and `up` roles, GraphiQL from the same bundle, and the one-time sign-in codes of `up`'s link.

The UI is a static single-page app that reads only the public GraphQL API with the token the user
signs in with (kept in the tab's session storage). `up` prints `http://HOST:PORT/#signin=<code>`:
the code travels in the URL fragment, which browsers never send to a server or put in a
Referer; the page swaps it for the token with `POST /ui/signin` and removes it from the address
bar. A code is good once, for :data:`SIGN_IN_TTL_S`; after that, paste the token `up` printed.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

__all__ = ["SIGN_IN_TTL_S", "STATIC", "SignInCodes", "graphiql_page", "ui_routes"]

STATIC = Path(__file__).with_name("static")
SIGN_IN_TTL_S = 15 * 60
_MAX_OPEN_CODES = 16

# Everything the pages load comes from this origin: no CDN, no inline script. Styles may be inline
# (the chart and graph libraries and GraphiQL set style attributes); fonts and icons may be data:.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_PAGE_HEADERS = {
    "content-security-policy": _CSP,
    "cache-control": "no-cache",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}


class SignInCodes:
    """One-time sign-in codes, each standing for a token: good once, for ``ttl_s`` seconds.

    Kept in the memory of the process that printed the link (`up`), by their SHA-256 only.
    """

    def __init__(
        self, ttl_s: float = SIGN_IN_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._codes: dict[bytes, tuple[str, float]] = {}
        self._lock = threading.Lock()  # `up` issues from its main thread, redeems in the loop

    @staticmethod
    def _key(code: str) -> bytes:
        return hashlib.sha256(code.encode()).digest()

    def issue(self, token: str) -> str:
        code = secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock()
            self._codes = {k: v for k, v in self._codes.items() if v[1] > now}
            while len(self._codes) >= _MAX_OPEN_CODES:
                self._codes.pop(next(iter(self._codes)))
            self._codes[self._key(code)] = (token, now + self._ttl_s)
        return code

    def redeem(self, code: str) -> str | None:
        """The token for ``code``, once; None when it is unknown, used or expired."""
        with self._lock:
            found = self._codes.pop(self._key(code), None)
        if found is None or found[1] <= self._clock():
            return None
        return found[0]


class _Assets(StaticFiles):
    """The bundle's files: content-hashed names, so they never change and cache for good."""

    def file_response(
        self,
        full_path: PathLike,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["cache-control"] = "public, max-age=31536000, immutable"
        response.headers["x-content-type-options"] = "nosniff"
        return response


def _page(name: str) -> bytes:
    path = STATIC / name
    if not path.is_file():
        # Only a checkout whose bundle was deleted gets here: the wheel and the repo carry it.
        return (
            b"<!doctype html><title>Studbook</title><p>The web UI's bundle is missing from "
            b"studbook_server/ui/static/: run <code>npm ci && npm run build</code> in web/."
        )
    return path.read_bytes()


def graphiql_page() -> Response:
    """GraphiQL (`/graphql` in a browser) from the bundle, not strawberry's CDN page."""
    return HTMLResponse(_page("graphiql.html"), headers=_PAGE_HEADERS)


def ui_routes(codes: SignInCodes | None = None) -> list[BaseRoute]:
    """`/` (the app), `/assets/*` (its files) and `POST /ui/signin` (code -> token).

    ``codes``: the sign-in codes of the link `up` printed; without them, sign-in is by token.
    """

    async def index(request: Request) -> Response:
        return HTMLResponse(_page("index.html"), headers=_PAGE_HEADERS)

    async def sign_in(request: Request) -> JSONResponse:
        no_store = {"cache-control": "no-store"}
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        code = body.get("code") if isinstance(body, dict) else None
        if not isinstance(code, str) or not 16 <= len(code) <= 128:
            return JSONResponse(
                {"error": 'send {"code": "<the code after #signin= in the link>"}'},
                status_code=400,
                headers=no_store,
            )
        token = codes.redeem(code) if codes is not None else None
        if token is None:
            return JSONResponse(
                {
                    "error": "This sign-in link was used already or has expired (a link works "
                    f"once, for {SIGN_IN_TTL_S // 60} minutes): paste the token "
                    "`studbook-server up` printed, or restart it for a new link."
                },
                status_code=400,
                headers=no_store,
            )
        return JSONResponse({"token": token}, headers=no_store)

    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Route("/ui/signin", sign_in, methods=["POST"]),
        Mount("/assets", app=_Assets(directory=STATIC / "assets", check_dir=False)),
    ]
