"""Dataset names from URIs: the rule that makes a pipeline's table and a training run's data one
dataset.

OpenLineage names a dataset by a namespace (where it lives: ``s3://lake``, ``postgres://db:5432``,
``file``) and a name within it (``features/churn``, ``analytics.public.events``); training code
names it by a URI (``s3://lake/features/churn``). Both are spellings of one URI
(:func:`openlineage_uri`), and :func:`dataset_name` turns that URI into the Studbook dataset name,
which must be 1 to 200 letters, digits, ``.``, ``_``, ``/`` or ``-``:

* ``s3://lake/features/churn`` (namespace ``s3://lake``, name ``features/churn``):
  ``s3/lake/features/churn``
* ``postgres://db:5432/analytics.public.events`` (``postgres://db:5432``,
  ``analytics.public.events``): ``postgres/db_5432/analytics.public.events``
* ``file:///data/train.csv`` (``file``, ``/data/train.csv``): ``file/data/train.csv``
* ``bigquery:proj.sales.orders`` (``bigquery``, ``proj.sales.orders``):
  ``bigquery/proj.sales.orders``

``://`` becomes ``/`` (and ``scheme:rest`` reads as ``scheme://rest``), a port's ``:`` becomes
``_``, a local file's empty authority (``file:///``) is dropped and trailing slashes are ignored.
A URI that does not read that way unambiguously (other characters, such as ``=``, ``@`` or
spaces; a ``file://`` URI with a host; another scheme without one; more than 200 characters)
gets a readable prefix and 12 hex digits of the URI's SHA-256:
``s3/lake/events/date_2026-03-01-8f93ef78c211``. The server's OpenLineage endpoint applies the
same rule (docs/openlineage.md).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["canonical_uri", "dataset_name", "openlineage_uri"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_PORT = re.compile(r"(.+):([0-9]{1,5})")
_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]+")
_HASHED_PREFIX = 187  # + "-" + 12 hex digits = 200


def canonical_uri(uri: str) -> str:
    """``uri`` in the form names are made from: scheme in lowercase, trailing ``/`` removed,
    ``file://localhost/`` spelled ``file:///`` and a ``file:`` path percent-decoded (as a local
    path is, e.g. by ``Path.as_uri()``)."""
    scheme, sep, rest = uri.partition("://")
    if sep and _SCHEME.fullmatch(scheme):
        scheme = scheme.lower()
        if scheme == "file":
            if rest.startswith("localhost/"):
                rest = rest[len("localhost") :]
            rest = unquote(rest)
        rest = rest.rstrip("/") if rest.strip("/") else rest
        return f"{scheme}://{rest}"
    return uri.rstrip("/") if uri.strip("/") else uri


def openlineage_uri(namespace: str, name: str) -> str:
    """The URI of the OpenLineage dataset ``name`` in ``namespace``.

    ``scheme://authority`` namespaces join with ``/`` (``s3://lake`` + ``features/churn``);
    ``file`` (the local file system) takes an absolute path (``file:///data/train.csv``); any
    other namespace (``bigquery``, an AWS Glue ARN) joins with ``:``.
    """
    if "://" in namespace:
        return canonical_uri(f"{namespace.rstrip('/')}/{name.lstrip('/')}")
    if namespace == "file":
        return canonical_uri("file:///" + name.lstrip("/"))
    return canonical_uri(f"{namespace}:{name}")


def _readable(uri: str) -> str | None:
    """The name as read off the URI, or None where that could be mistaken for another URI's."""
    scheme, sep, rest = uri.partition("://")
    if sep and _SCHEME.fullmatch(scheme):
        authority, _, path = rest.partition("/")
        if scheme == "file":
            # Local files only (`file:///...`): `file://host/x` would read like `file:///host/x`.
            return f"file/{path}" if not authority and path else None
        if not authority:
            return None  # `hdfs:///x` would read like `hdfs://x`
        port = _PORT.fullmatch(authority)
        if port is not None and "@" not in authority and "[" not in authority:
            authority = f"{port[1]}_{port[2]}"
        return "/".join(part for part in (scheme, authority, path) if part)
    scheme, colon, rest = uri.partition(":")
    if colon and _SCHEME.fullmatch(scheme) and rest and not rest.startswith("/"):
        return f"{scheme}/{rest}"
    return uri


def dataset_name(uri: str) -> str:
    """The Studbook dataset name of the data at ``uri`` (see the module docstring), e.g.
    ``s3/lake/features/churn`` for ``s3://lake/features/churn``."""
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"expected a non-empty uri, got {uri!r}")
    canonical = canonical_uri(uri)
    readable = _readable(canonical)
    if readable is not None and _NAME.fullmatch(readable) and "//" not in readable:
        return readable
    import hashlib  # lazily: loading OpenSSL costs megabytes of RSS

    suffix = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    safe = re.sub("/+", "/", _UNSAFE.sub("_", canonical.replace("://", "/", 1)))
    safe = safe.lstrip("._/-")[:_HASHED_PREFIX].rstrip("/")
    return f"{safe}-{suffix}" if safe else f"dataset-{suffix}"
