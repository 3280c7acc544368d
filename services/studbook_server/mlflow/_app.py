"""The dispatcher: `/mlflow[/<project>]/api/...` to a handler of the route table.

The project comes from the path (`MLFLOW_TRACKING_URI=http://host:8080/mlflow/<project>`), or,
without one, from a token scoped to exactly one project. The caller is authenticated like the
rest of the API (`Authorization: Bearer`), reads need `read`, writes `write`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from studbook_server import auth
from studbook_server.graphql import ApiDeps
from studbook_server.mlflow._errors import (
    PERMISSION_DENIED,
    UNAUTHENTICATED,
    MlflowError,
    endpoint_not_found,
    invalid,
    unavailable,
)
from studbook_server.mlflow._http import Ctx, Endpoint, Params
from studbook_server.mlflow._table import endpoints

log = logging.getLogger(__name__)

PREFIX = "/mlflow"
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]

# MLflow features Studbook does not serve: the first path segment after `mlflow/` (or the
# `/api/<v>/` part) names the feature in the 404 (docs/mlflow.md lists them).
UNSUPPORTED: dict[str, str] = {
    "traces": "tracing (GenAI traces)",
    "spans": "tracing (GenAI traces)",
    "assessments": "GenAI assessments",
    "prompts": "the prompt registry",
    "prompt-optimization": "prompt optimization",
    "gateway": "the AI gateway",
    "endpoints": "the AI gateway",
    "secrets": "the AI gateway's secrets",
    "scorers": "scorers (GenAI evaluation)",
    "evaluation-datasets": "GenAI evaluation datasets",
    "webhooks": "webhooks",
    "workspaces": "workspaces",
    "users": "MLflow's auth plugin (Studbook tokens are managed with `studbook-server tokens`)",
    "permissions": "MLflow's auth plugin (Studbook tokens are managed with `studbook-server tokens`)",
    "jobs": "MLflow jobs",
    "labeling-sessions": "GenAI labeling sessions",
}


def _split(rest: str) -> tuple[str | None, str]:
    """(project named in the path or None, the MLflow path `/api/...`)."""
    rest = "/" + rest.lstrip("/")
    if rest.startswith("/api/") or rest == "/api":
        return None, rest
    project, _, tail = rest[1:].partition("/")
    return project, "/" + tail


def _feature(path: str) -> str:
    pieces = [p for p in path.split("/") if p]
    # /api/2.0/mlflow/<feature>/..., /api/3.0/mlflow/<feature>/..., /ajax-api/...
    for piece in pieces[2:4]:
        if piece in UNSUPPORTED:
            return UNSUPPORTED[piece]
    return ""


def _match(method: str, path: str) -> tuple[Endpoint, dict[str, str]]:
    allowed: list[str] = []
    for endpoint in endpoints():
        m = endpoint.pattern.match(path)
        if m is None:
            continue
        if endpoint.method != method:
            allowed.append(endpoint.method)
            continue
        return endpoint, m.groupdict()
    if allowed:
        raise MlflowError(
            "ENDPOINT_NOT_FOUND",
            f"{method} {path} is not served; use {' or '.join(sorted(set(allowed)))}",
            405,
        )
    feature = _feature(path)
    if feature:
        raise endpoint_not_found(
            f"Studbook's MLflow API does not support {feature}: {method} {path} is not served "
            "(docs/mlflow.md lists what is)"
        )
    raise endpoint_not_found(f"Studbook's MLflow API does not serve {method} {path}")


def _choose_project(named: str | None, principal: auth.Principal) -> str:
    if named is not None:
        if not _PROJECT.match(named):
            raise invalid(
                f"`{named}` in the tracking URI is not a Studbook project name (lowercase "
                "letters, digits, `.`, `_`, `-`): set MLFLOW_TRACKING_URI to "
                "http://<host>/mlflow/<project>"
            )
        if not principal.may_access(named):
            raise MlflowError(
                PERMISSION_DENIED,
                f"token `{principal.name}` may not access project `{named}`",
                403,
            )
        return named
    projects = principal.projects
    if len(projects) == 1 and "*" not in projects:
        return next(iter(projects))
    raise invalid(
        "no Studbook project in the tracking URI, and the token is not scoped to exactly one "
        "project: set MLFLOW_TRACKING_URI to http://<host>/mlflow/<project>"
    )


async def _principal(deps: ApiDeps, request: Request) -> auth.Principal:
    if deps.settings.auth_disabled:
        return auth.ANONYMOUS_ADMIN
    try:
        principal = await auth.authenticate(deps.pool, request.headers.get("authorization"))
    except auth.AuthUnavailable as exc:
        raise unavailable(str(exc)) from exc
    if principal is None:
        raise MlflowError(
            UNAUTHENTICATED,
            "missing or invalid bearer token: set MLFLOW_TRACKING_TOKEN to a Studbook token "
            "(sbk_...)",
            401,
        )
    return principal


async def dispatch(deps: ApiDeps, request: Request) -> Response:
    try:
        named, path = _split(request.path_params.get("rest", ""))
        endpoint, path_params = _match(request.method, path)
        principal = await _principal(deps, request)
        project = _choose_project(named, principal)
        # Reads (GET, and the POST searches) need `read`, writes `write` (checked again by
        # the write path), as in the rest of Studbook's API.
        scope = "read" if request.method == "GET" or path.endswith("/search") else "write"
        if not principal.has_scope(scope):
            raise MlflowError(
                PERMISSION_DENIED, f"token `{principal.name}` lacks the `{scope}` scope", 403
            )
        params = await Params.read(request, deps.settings.max_body_bytes)
        ctx = Ctx(deps, request, project, principal, params, path_params)
        result = await endpoint.handler(ctx)
    except MlflowError as exc:
        return exc.response()
    if isinstance(result, Response):
        return result
    return JSONResponse(result)


def routes(current: Callable[[], ApiDeps]) -> list[BaseRoute]:
    """Everything under `/mlflow` (with or without a project); ``current`` returns the API's
    dependencies made in the app's lifespan."""

    async def endpoint(request: Request) -> Response:
        return await dispatch(current(), request)

    return [
        Route(PREFIX, endpoint, methods=_METHODS),
        Route(PREFIX + "/{rest:path}", endpoint, methods=_METHODS),
    ]
