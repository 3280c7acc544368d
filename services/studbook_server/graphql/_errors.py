"""Errors the API reports to its callers, readable through `MaskErrors`.

StudbookError
 └── ApiError            a problem the caller can fix; its message is shown as is
      ├── Unauthenticated   no token, or an unknown or revoked one (HTTP 401)
      ├── Forbidden         the token lacks a scope or the project
      ├── NotFound          an id that names nothing the caller may see
      ├── BadInput          an argument that cannot be used; the message names it
      ├── NotCaughtUp       the projection did not reach a consistency token in time
      ├── ReadOnly          a mutation on an API started without a publisher
      └── Unavailable       the event transport did not take a command (nothing recorded)

Anything else raised while resolving is an internal error: `MaskErrors` replaces its message.
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLError
from studbook_server.errors import StudbookError


class ApiError(StudbookError):
    code = "BAD_REQUEST"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # graphql-core copies `extensions` of the original error into the response.
        self.extensions: dict[str, Any] = {"code": self.code}


class Unauthenticated(ApiError):
    code = "UNAUTHENTICATED"


class Forbidden(ApiError):
    code = "FORBIDDEN"


class NotFound(ApiError):
    code = "NOT_FOUND"


class BadInput(ApiError):
    code = "BAD_USER_INPUT"


class NotCaughtUp(ApiError):
    code = "NOT_CAUGHT_UP"


class ReadOnly(ApiError):
    code = "READ_ONLY"


class Unavailable(ApiError):
    code = "UNAVAILABLE"


def should_mask(error: GraphQLError) -> bool:
    """Mask internal errors only: parse / validation errors and :class:`ApiError` stay readable."""
    original = error.original_error
    if original is None:
        return False
    if isinstance(original, GraphQLError):
        return should_mask(original)
    return not isinstance(original, ApiError)
