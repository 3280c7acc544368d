"""MLflow-shaped errors: `{"error_code": "<name>", "message": "..."}` with the HTTP status MLflow uses.

The mlflow client reads `error_code` from the JSON body (a body without one becomes
INTERNAL_ERROR) and retries 5xx for minutes: every logical error is a 4xx :class:`MlflowError`.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

INVALID_PARAMETER_VALUE = "INVALID_PARAMETER_VALUE"
RESOURCE_DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"
RESOURCE_ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
ENDPOINT_NOT_FOUND = "ENDPOINT_NOT_FOUND"
UNAUTHENTICATED = "UNAUTHENTICATED"
PERMISSION_DENIED = "PERMISSION_DENIED"
INVALID_STATE = "INVALID_STATE"
TEMPORARILY_UNAVAILABLE = "TEMPORARILY_UNAVAILABLE"
REQUEST_LIMIT_EXCEEDED = "REQUEST_LIMIT_EXCEEDED"
INTERNAL_ERROR = "INTERNAL_ERROR"


class MlflowError(Exception):
    """Raised anywhere in a handler; answered as MLflow's error body."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "5"} if self.status == 503 else None
        return JSONResponse(
            {"error_code": self.code, "message": self.message},
            status_code=self.status,
            headers=headers,
        )


def invalid(message: str) -> MlflowError:
    """400 INVALID_PARAMETER_VALUE: name the field and what was expected."""
    return MlflowError(INVALID_PARAMETER_VALUE, message, 400)


def not_found(message: str) -> MlflowError:
    """404 RESOURCE_DOES_NOT_EXIST."""
    return MlflowError(RESOURCE_DOES_NOT_EXIST, message, 404)


def already_exists(message: str) -> MlflowError:
    """400 RESOURCE_ALREADY_EXISTS."""
    return MlflowError(RESOURCE_ALREADY_EXISTS, message, 400)


def endpoint_not_found(message: str) -> MlflowError:
    """404 ENDPOINT_NOT_FOUND: an MLflow route Studbook does not serve."""
    return MlflowError(ENDPOINT_NOT_FOUND, message, 404)


def unavailable(message: str) -> MlflowError:
    """503 TEMPORARILY_UNAVAILABLE: the client retries."""
    return MlflowError(TEMPORARILY_UNAVAILABLE, message, 503)
