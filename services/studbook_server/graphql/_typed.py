"""Typed stand-ins for strawberry's resolver decorators.

`@strawberry.field(description=...)` is typed as returning `Any`, so under `mypy --strict` every
resolver it decorates becomes untyped. These keep the decorated function's own type for mypy and
do exactly what strawberry's decorators do at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import strawberry

F = TypeVar("F", bound=Callable[..., Any])


def field(**options: Any) -> Callable[[F], F]:
    """`@strawberry.field(**options)`."""

    def decorate(fn: F) -> F:
        return cast(F, strawberry.field(**options)(fn))

    return decorate


def mutation(**options: Any) -> Callable[[F], F]:
    """`@strawberry.mutation(**options)`."""

    def decorate(fn: F) -> F:
        return cast(F, strawberry.mutation(**options)(fn))

    return decorate


def subscription(**options: Any) -> Callable[[F], F]:
    """`@strawberry.subscription(**options)`."""

    def decorate(fn: F) -> F:
        return cast(F, strawberry.subscription(**options)(fn))

    return decorate
