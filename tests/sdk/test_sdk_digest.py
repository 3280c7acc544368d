"""Dataset digests: stable, sensitive to content and paths, and cached by (path, size, mtime)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from studbook import _digest
from studbook._digest import digest_path, locate

HOUR_AGO = time.time() - 3600


def make_tree(root: Path, files: dict[str, bytes], order: list[str] | None = None) -> Path:
    for rel in order or list(files):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[rel])
        os.utime(path, (HOUR_AGO, HOUR_AGO))  # old enough to be cached
    return root


FILES = {
    "a.csv": b"user,churned\n1,0\n",
    "sub/b.parquet": os.urandom(3 * (1 << 20) + 17),  # several 1 MiB chunks
    "sub/deeper/c.txt": b"",
    ".hidden": b"x",
}


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "digest-cache"


def test_digest_is_stable_across_runs_and_creation_orders(tmp_path: Path, cache: Path) -> None:
    one = make_tree(tmp_path / "one", FILES)
    two = make_tree(tmp_path / "two", FILES, order=list(reversed(FILES)))
    first = digest_path(one, cache_dir=cache)
    assert first == digest_path(one, cache_dir=cache)  # cached
    assert first == digest_path(one, use_cache=False)  # computed again
    assert first == digest_path(two, cache_dir=cache)
    digest, size = first
    assert digest.startswith("sha256:")
    assert len(digest) == 71
    assert size == sum(len(v) for v in FILES.values())


def test_digest_is_the_documented_tree_hash(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", FILES)
    lines = "".join(
        f"{rel}\0{len(FILES[rel])}\0{hashlib.sha256(FILES[rel]).hexdigest()}\n"
        for rel in sorted(FILES)
    )
    expected = "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
    assert digest_path(root, use_cache=False)[0] == expected


def test_digest_changes_with_content_and_paths(tmp_path: Path, cache: Path) -> None:
    root = make_tree(tmp_path / "t", FILES)
    base = digest_path(root, cache_dir=cache)[0]
    (root / "a.csv").write_bytes(b"user,churned\n1,1\n")  # same size, new content
    changed = digest_path(root, cache_dir=cache)[0]
    assert changed != base
    (root / "a.csv").rename(root / "renamed.csv")
    renamed = digest_path(root, cache_dir=cache)[0]
    assert renamed not in (base, changed)
    (root / "sub" / "new.txt").write_bytes(b"")
    assert digest_path(root, cache_dir=cache)[0] != renamed


def test_a_file_digest_is_the_sha256_of_its_content(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(FILES["sub/b.parquet"])
    expected = "sha256:" + hashlib.sha256(FILES["sub/b.parquet"]).hexdigest()
    assert digest_path(path, cache_dir=cache) == (expected, len(FILES["sub/b.parquet"]))


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        digest_path(tmp_path / "nope")


def count_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real_open: Callable[..., Any] = open

    def spy(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(_digest, "open", spy, raising=False)
    return opened


def test_cache_hit_reads_no_file_content(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_tree(tmp_path / "t", FILES)
    opened = count_opens(monkeypatch)
    first = digest_path(root, cache_dir=cache)
    assert len(opened) == len(FILES)
    opened.clear()
    assert digest_path(root, cache_dir=cache) == first
    assert opened == []
    # Only the changed file is read again.
    (root / "a.csv").write_bytes(b"changed")
    os.utime(root / "a.csv", (HOUR_AGO, HOUR_AGO + 1))
    digest_path(root, cache_dir=cache)
    assert opened == [str(root / "a.csv")]


def test_recently_modified_files_are_not_cached(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "fresh"
    root.mkdir()
    (root / "new.csv").write_bytes(b"1")
    opened = count_opens(monkeypatch)
    digest_path(root, cache_dir=cache)
    digest_path(root, cache_dir=cache)
    assert len(opened) == 2  # its mtime cannot yet tell a same-size rewrite apart


def test_cache_lives_under_studbook_cache_dir(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", {"x": b"1"})
    digest_path(root)
    assert list((tmp_path / "cache" / "digests").glob("*.ndjson"))


def test_locate(tmp_path: Path) -> None:
    assert locate("s3://bucket/model.pkl", hash_local=True) == ("s3://bucket/model.pkl", None, None)
    path = tmp_path / "m.bin"
    path.write_bytes(b"abc")
    uri, digest, size = locate(str(path), hash_local=True)
    assert uri == path.resolve().as_uri()
    assert digest == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert size == 3
    with pytest.raises(FileNotFoundError):
        locate(tmp_path / "missing", hash_local=True)
