"""MLflow's artifact proxy: `/api/2.0/mlflow-artifacts/artifacts/<path>` and server-info.

Runs and logged models carry `mlflow-artifacts:/...` URIs, so the mlflow client uploads and
downloads through the tracking server: one `PUT` of raw bytes per file, `GET` for the bytes, a
listing with `?path=`. Files live below the artifact root (`STUDBOOK_ARTIFACT_ROOT`: a folder or
any fsspec URL), one folder per project. Uploads are streamed to the store chunk by chunk while
their SHA-256 and size are computed, never held whole; each stored file becomes an
`artifact.stored` event (subject: the run or logged model its path names), and listings come from
the read model of those events (`rm.artifacts`). Paths that climb out of the root are refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import posixpath
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import fsspec
from fsspec.implementations.local import LocalFileSystem
from starlette.responses import Response, StreamingResponse

from studbook_server.config import Settings
from studbook_server.locate import default_data_dir
from studbook_server.mlflow._errors import invalid, not_found
from studbook_server.mlflow._http import Ctx, Endpoint
from studbook_server.mlflow._models import new_event

PATH = "/api/2.0/mlflow-artifacts/artifacts"
# Bytes handed to the store per write: large enough that the hop to a worker thread costs
# little, small enough that an upload of any size holds only this much.
WRITE_CHUNK = 1024 * 1024
READ_CHUNK = 1024 * 1024
MAX_PATH = 2048

# `<experiment>/models/<logged model id>/artifacts/...` and `<experiment>/<run id>/artifacts/...`
_LOGGED_MODEL_PATH = re.compile(
    r"^[^/]+/models/(?P<id>[A-Za-z0-9][A-Za-z0-9._-]{0,127})/artifacts/"
)
_RUN_PATH = re.compile(r"^[^/]+/(?P<id>[A-Za-z0-9][A-Za-z0-9._-]{0,127})/artifacts/")


def clean_path(raw: str | None, *, allow_empty: bool = False) -> str:
    """The artifact path, relative and normalised; refused (400) if it could leave the root."""
    path = (raw or "").strip()
    if not path:
        if allow_empty:
            return ""
        raise invalid(
            "an artifact path is required: PUT/GET /api/2.0/mlflow-artifacts/artifacts/<path>"
        )
    if len(path) > MAX_PATH:
        raise invalid(f"artifact path is {len(path)} characters long; at most {MAX_PATH}")
    if "\x00" in path or "\\" in path:
        raise invalid(f"artifact path `{path}` must not contain NUL or backslash characters")
    if path.startswith("/") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", path):
        raise invalid(f"artifact path `{path}` must be relative to the artifact root, not absolute")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise invalid(
            f"artifact path `{path}` must not contain `..`: it would leave the artifact root"
        )
    if not parts and not allow_empty:
        raise invalid(f"artifact path `{path}` names no file")
    return "/".join(parts)


def subject_of(project: str, path: str) -> tuple[str, dict[str, str]]:
    """The subject an artifact's event is about, and the payload fields that name it."""
    m = _LOGGED_MODEL_PATH.match(path)
    if m:
        return f"logged_model:{m['id']}", {"logged_model": m["id"]}
    m = _RUN_PATH.match(path)
    if m:
        return f"run:{m['id']}", {"run": m["id"]}
    return f"project:{project}", {}


def manifest_digest(files: Sequence[tuple[str, str, int]]) -> str:
    """The digest of a set of files: SHA-256 of their manifest, one line per file sorted by path,
    `<path relative to the model's folder>\\t<sha256:hex of the file>\\t<size in bytes>\\n`."""
    lines = "".join(f"{p}\t{d}\t{s}\n" for p, d, s in sorted(files))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Store:
    """One project's folder in the artifact root, through fsspec."""

    fs: Any
    base: str  # the project's folder, in the filesystem's own path form

    @classmethod
    def of(cls, settings: Settings, project: str) -> Store:
        root = settings.artifact_root or str(default_data_dir() / "artifacts")
        fs, base = fsspec.core.url_to_fs(root)
        return cls(fs, f"{base.rstrip('/')}/{project}")

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def where(self, path: str) -> str:
        return f"{self.base}/{path}" if path else self.base

    def uri(self, path: str) -> str:
        if self.local:
            return Path(self.where(path)).as_uri()
        return str(self.fs.unstrip_protocol(self.where(path)))


async def _receive(ctx: Ctx, store: Store, path: str) -> tuple[str, int]:
    """Stream the request body into the store; (sha256:hex, size). A local file is written
    beside its final name and renamed when complete, so a reader never sees half a file."""
    final = store.where(path)
    target = f"{final}.part-{uuid.uuid4().hex}" if store.local else final
    sha = hashlib.sha256()
    size = 0

    def open_target() -> IO[bytes]:
        if store.local:
            store.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        return cast(IO[bytes], store.fs.open(target, "wb"))

    out = await asyncio.to_thread(open_target)
    pending: list[bytes] = []
    held = 0
    try:
        async for chunk in ctx.request.stream():
            if not chunk:
                continue
            sha.update(chunk)
            size += len(chunk)
            pending.append(chunk)
            held += len(chunk)
            if held >= WRITE_CHUNK:
                await asyncio.to_thread(out.write, b"".join(pending))
                pending, held = [], 0
        if pending:
            await asyncio.to_thread(out.write, b"".join(pending))
        await asyncio.to_thread(out.close)
        if store.local:
            await asyncio.to_thread(store.fs.mv, target, final)
    except BaseException:
        await asyncio.to_thread(out.close)
        if store.local and await asyncio.to_thread(store.fs.exists, target):
            await asyncio.to_thread(store.fs.rm, target)
        raise
    return "sha256:" + sha.hexdigest(), size


async def upload(ctx: Ctx) -> dict[str, Any]:
    ctx.need("write")
    path = clean_path(ctx.path_params.get("path"))
    store = Store.of(ctx.deps.settings, ctx.project)
    if await asyncio.to_thread(store.fs.isdir, store.where(path)):
        raise invalid(f"artifact path `{path}` is a directory; name a file")
    digest, size = await _receive(ctx, store, path)
    subject, names = subject_of(ctx.project, path)
    payload: dict[str, Any] = {
        "path": path, "uri": store.uri(path), "size_bytes": size, "digest": digest, **names,
    }  # fmt: skip
    await ctx.submit([new_event(ctx, "artifact.stored", subject, payload)])
    return {}


async def download(ctx: Ctx) -> Response:
    path = clean_path(ctx.path_params.get("path"))
    store = Store.of(ctx.deps.settings, ctx.project)
    where = store.where(path)
    try:
        source = cast(IO[bytes], await asyncio.to_thread(store.fs.open, where, "rb"))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise not_found(f"no artifact at `{path}`") from exc

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while True:
                chunk = await asyncio.to_thread(source.read, READ_CHUNK)
                if not chunk:
                    return
                yield chunk
        finally:
            await asyncio.to_thread(source.close)

    size = getattr(source, "size", None)
    headers = {"Content-Length": str(size)} if isinstance(size, int) else None
    media = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return StreamingResponse(chunks(), media_type=media, headers=headers)


# A run's or logged model's folder is listed through the subject index; other folders scan the
# project's artifacts.
_LIST = """
SELECT path, size_bytes FROM rm.artifacts
WHERE project = $1 AND (path = $2 OR starts_with(path, $3))
  AND ($4::text IS NULL OR subject = $4)
ORDER BY path
"""


async def listing(ctx: Ctx) -> dict[str, Any]:
    """The files and folders directly in `path` (a file's own path answers `{}`), from the read
    model of stored artifacts."""
    path = clean_path(ctx.params.text("path"), allow_empty=True)
    prefix = f"{path}/" if path else ""
    subject, names = subject_of(ctx.project, prefix + "x")
    rows = await ctx.pool.fetch(_LIST, ctx.project, path, prefix, subject if names else None)
    children: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["path"] == path:
            return {}  # a file: the client lists it before downloading it
        name, slash, _rest = row["path"][len(prefix) :].partition("/")
        if slash:
            # MLflow's proxy names each entry by its base name.
            children.setdefault(name, {"path": name, "is_dir": True})
        else:
            children[name] = {
                "path": name, "is_dir": False, "file_size": row["size_bytes"],
            }  # fmt: skip
    if not children:
        return {}
    return {"files": [children[k] for k in sorted(children)]}


async def server_info(ctx: Ctx) -> dict[str, Any]:
    return {"multipart_uploads_enabled": False, "multipart_downloads_enabled": False}


ENDPOINTS: list[Endpoint] = [
    Endpoint("PUT", PATH + "/{path:path}", upload),
    Endpoint("GET", PATH + "/{path:path}", download),
    Endpoint("GET", PATH, listing),
    Endpoint("GET", "/api/3.0/mlflow/server-info", server_info),
]
