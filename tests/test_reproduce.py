"""`studbook reproduce` end to end, against a real Studbook (`up` on a fresh database).

A small git repository holds a deterministic training script: it reads a CSV, sums its column
and multiplies by a param (`--scale`) and a constant in the code (`FACTOR`), so the metric tells
which code, data and params a run used. The script runs through the SDK in a virtual
environment of its own; then the code, the data file and the params change, and `studbook
reproduce` (the console script, as a subprocess) re-runs the first runs.

No network: the environments are built with uv from a wheel folder this module makes from what
is installed here (the SDK from its source, orjson and urllib3 repacked from their installed
files), and the training environment holds only those three packages. One history is made per
module; each test re-runs one of its runs.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import importlib.metadata
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
import uvicorn

import studbook
from studbook_server import auth
from studbook_server.adapters import postgres
from studbook_server.http import build_app
from tests.support import migrated, settings_for

Factory = Callable[..., Coroutine[Any, Any, str]]
ROOT = Path(__file__).resolve().parents[1]
STUDBOOK = Path(sys.executable).with_name("studbook")
PROJECT = "lab"

TRAIN = '''\
"""Sums the first column of a CSV, times --scale and FACTOR: the metric names code, data, params."""
import argparse
import csv
import hashlib
import shutil
from pathlib import Path

import studbook

FACTOR = 1.0

parser = argparse.ArgumentParser()
parser.add_argument("--scale", type=float, default=2.0)
parser.add_argument("--data", default="data/train.csv")
parser.add_argument("--remote", default=None, help="keep a content-addressed copy there")
args = parser.parse_args()
uri = None
if args.remote:
    digest = hashlib.sha256(Path(args.data).read_bytes()).hexdigest()
    copy = Path(args.remote) / f"{digest}.csv"
    shutil.copyfile(args.data, copy)
    uri = copy.as_uri()
train = studbook.dataset_version("train", path=args.data, uri=uri)
with studbook.start_run("fit", params={"scale": args.scale}) as run:
    run.use(train, role="train")
    with open(args.data) as f:
        values = [float(row[0]) for row in csv.reader(f)]
    run.log_metric("total", sum(values) * args.scale * FACTOR)
    run.log_metric("rows", len(values))
print("run", run.id)
'''


# ------------------------------------------------------------------------------- wheels


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _write_wheel(folder: Path, name: str, version: str, tag: str, files: dict[str, bytes]) -> Path:
    """A wheel holding ``files`` (their dist-info included but for RECORD, written here)."""
    record = f"{name}-{version}.dist-info/RECORD"
    lines = [f"{path},{_record_hash(data)},{len(data)}" for path, data in files.items()]
    files = {**files, record: ("\n".join([*lines, f"{record},,"]) + "\n").encode()}
    path = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name_in_zip, data in files.items():
            z.writestr(name_in_zip, data)
    return path


def _repack(folder: Path, dist_name: str) -> str:
    """A wheel of an installed distribution, from its installed files; its requirement."""
    dist = importlib.metadata.distribution(dist_name)
    base = Path(str(dist.locate_file("")))
    files: dict[str, bytes] = {}
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    for f in dist.files or []:
        posix = f.as_posix()
        if posix.startswith("..") or "__pycache__" in posix or f.name in skip:
            continue
        files[posix] = (base / f).read_bytes()
    wheel_meta = dist.read_text("WHEEL") or ""
    tag = next(line.split(":", 1)[1].strip() for line in wheel_meta.splitlines()
               if line.startswith("Tag:"))  # fmt: skip
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    _write_wheel(folder, name, dist.version, tag, files)
    return f"{dist.metadata['Name']}=={dist.version}"


def _sdk_wheel(folder: Path) -> str:
    """The SDK (sdk/studbook, with its `studbook` command) as a wheel, from this checkout."""
    package = ROOT / "sdk" / "studbook"
    files = {
        f"studbook/{p.relative_to(package).as_posix()}": p.read_bytes()
        for p in sorted(package.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }
    info = f"studbook-{studbook.__version__}.dist-info"
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: studbook\nVersion: {studbook.__version__}\n"
        "Requires-Dist: orjson\nRequires-Dist: urllib3\n"
    ).encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{info}/entry_points.txt"] = b"[console_scripts]\nstudbook = studbook._cli:main\n"
    _write_wheel(folder, "studbook", studbook.__version__, "py3-none-any", files)
    return f"studbook=={studbook.__version__}"


# ------------------------------------------------------------------------------- studbook


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    token: str

    def query(self, text: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        import urllib.request

        req = urllib.request.Request(
            f"{self.url}/graphql",
            data=orjson.dumps({"query": text, "variables": variables or {}}),
            headers={"authorization": f"Bearer {self.token}", "content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body: dict[str, Any] = orjson.loads(r.read())
        assert "errors" not in body, body
        return body["data"]  # type: ignore[no-any-return]

    def finished(self, run: str) -> dict[str, Any]:
        """The run once its run.finished has been projected."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = self.query(RUN, {"id": run})["run"]
            if found is not None and found["status"] != "RUNNING":
                return found
            time.sleep(0.05)
        raise AssertionError(f"{run} was not projected as finished in 20 s")


RUN = """
query($id: ID!) {
  run(id: $id) {
    id status code params { key value } metrics { key value }
    inputs { id datasetVersion { digest source { repoPath } } }
    codeDiff { digest text }
    reproducedFrom { id } derivedFrom { id }
    reproductions { id } derivedRuns { id }
  }
}
"""


@pytest_asyncio.fixture(scope="module")
async def server(database_factory: Factory) -> AsyncIterator[Server]:
    """`up` (gateway, projector and GraphQL API in one app) served by uvicorn in a thread."""
    url = await database_factory()
    await migrated(url)
    con = await postgres.connect(url)
    try:
        _, token = await auth.create_token(con, "reproducer", ["read", "write"], [PROJECT])
    finally:
        await con.close()
    port = _free_port()
    app = build_app("up", settings_for(url, "", "unused", "unused", kafka_bootstrap=None))
    served = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=served.run, name="studbook-up", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not served.started:
        assert thread.is_alive(), "`up` stopped while starting"
        assert time.monotonic() < deadline, "`up` did not start in 30 s"
        await asyncio.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{port}", token)
    finally:
        served.should_exit = True
        thread.join(timeout=30)


# ------------------------------------------------------------------------------- history


@dataclass
class History:
    repo: Path
    wheels: Path
    env: dict[str, str]
    commits: dict[str, str]
    runs: dict[str, str]
    digests: dict[str, str]
    tmp: Path

    def reproduce(self, run: str, workdir: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(STUDBOOK), "reproduce", f"{PROJECT}/run:{run}", "--yes",
             "--workdir", str(self.tmp / workdir), "--find-links", str(self.wheels), "--no-index",
             *extra],
            cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@x", *args],
        cwd=repo, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def _csv(path: Path, values: list[float]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([[v] for v in values])
    path.write_text(buffer.getvalue())
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def history(server: Server, tmp_path_factory: pytest.TempPathFactory) -> History:
    tmp = tmp_path_factory.mktemp("reproduce")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STUDBOOK_", "UV_"))}
    env |= {
        "STUDBOOK_URL": server.url,
        "STUDBOOK_TOKEN": server.token,
        "STUDBOOK_PROJECT": PROJECT,
        "STUDBOOK_CACHE_DIR": str(tmp / "cache"),
        "STUDBOOK_SPOOL_DIR": str(tmp / "spool"),
        "UV_CACHE_DIR": str(tmp / "uv-cache"),
        "UV_PYTHON_DOWNLOADS": "never",
    }
    wheels = tmp / "wheels"
    wheels.mkdir()
    pins = [_sdk_wheel(wheels), _repack(wheels, "orjson"), _repack(wheels, "urllib3")]
    venv = tmp / "train-env"
    uv = [sys.executable, "-m", "uv"]
    for cmd in (
        [*uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        [*uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "--no-deps",
         "--no-index", "--find-links", str(wheels), *pins],
    ):  # fmt: skip
        subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=tmp)
    python = str(venv / "bin" / "python")

    repo = tmp / "repo"
    (repo / "data").mkdir(parents=True)
    remote = tmp / "remote"
    remote.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / ".gitignore").write_text("data/\n")
    (repo / "train.py").write_text(TRAIN)
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first model")
    commits = {"first": _git(repo, "rev-parse", "HEAD")}

    def train(*args: str) -> str:
        done = subprocess.run([python, "train.py", *args], cwd=repo, env=env,
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.split()[-1]

    digests = {"v1": _csv(repo / "data" / "train.csv", [1, 2, 3])}
    runs = {"remote": train("--scale", "2", "--remote", str(remote))}  # total 6 * 2 * 1 = 12
    digests["v2"] = _csv(repo / "data" / "train.csv", [1, 2, 3, 4])
    runs["local"] = train("--scale", "2")  # total 10 * 2 * 1 = 20; data only in data/train.csv

    # The code, the default param and the data change...
    (repo / "train.py").write_text(
        TRAIN.replace("FACTOR = 1.0", "FACTOR = 10.0").replace("default=2.0", "default=3.0")
    )
    _git(repo, "commit", "-q", "-am", "bigger factor")
    commits["second"] = _git(repo, "rev-parse", "HEAD")
    digests["v3"] = _csv(repo / "data" / "train.csv", [5, 5])
    # ... and a run from a dirty tree: FACTOR = 7.0 is in no commit.
    (repo / "train.py").write_text(TRAIN.replace("FACTOR = 1.0", "FACTOR = 7.0"))
    runs["dirty"] = train("--scale", "3", "--remote", str(remote))  # total 10 * 3 * 7 = 210
    _git(repo, "checkout", "--", "train.py")
    (repo / "train.py").write_text(TRAIN.replace("FACTOR = 1.0", "FACTOR = 100.0"))
    _git(repo, "commit", "-q", "-am", "even bigger factor")
    digests["v4"] = _csv(repo / "data" / "train.csv", [9])

    for run in runs.values():
        server.finished(f"{PROJECT}/run:{run}")
    return History(repo, wheels, env, commits, runs, digests, tmp)


def _metrics(run: dict[str, Any]) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["metrics"]}


def _params(run: dict[str, Any]) -> dict[str, Any]:
    return {p["key"]: p["value"] for p in run["params"]}


# ------------------------------------------------------------------------------- tests


def test_a_run_is_reproduced_with_its_commit_params_and_data(
    server: Server, history: History
) -> None:
    original_id = f"{PROJECT}/run:{history.runs['remote']}"
    original = server.query(RUN, {"id": original_id})["run"]
    assert _metrics(original) == {"total": 12.0, "rows": 3.0}
    assert original["code"]["argv"][:2] == ["--scale", "2"]

    done = history.reproduce(history.runs["remote"], "first")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # The plan came first, then the steps, then the verdict.
    assert out.index("Re-run") < out.index("code: commit") < out.index("verdict:")
    assert f"commit {history.commits['first']}" in out
    assert "verdict: REPRODUCED: 2 of 2 metrics within rtol 1e-06" in out

    after = server.query(RUN, {"id": original_id})["run"]
    assert [r["id"] for r in after["reproductions"]] == [
        line.split()[1] for line in out.splitlines() if line.startswith("run: ")
    ]
    rerun = server.query(RUN, {"id": after["reproductions"][0]["id"]})["run"]
    assert rerun["reproducedFrom"] == {"id": original_id}
    assert rerun["derivedFrom"] is None
    assert rerun["status"] == "COMPLETED"
    assert rerun["code"]["git_commit"] == history.commits["first"]  # not the newest commit
    assert rerun["code"]["git_dirty"] is False
    assert _params(rerun) == {"scale": 2.0}  # not the newest default (3.0)
    assert _metrics(rerun) == _metrics(original)
    # The old data version, fetched again from its copy: data/train.csv now holds v4.
    assert [i["id"] for i in rerun["inputs"]] == [i["id"] for i in original["inputs"]]
    assert rerun["inputs"][0]["datasetVersion"]["digest"] == history.digests["v1"]
    placed = history.tmp / "first" / "code" / "data" / "train.csv"
    assert "sha256:" + hashlib.sha256(placed.read_bytes()).hexdigest() == history.digests["v1"]
    assert original["inputs"][0]["datasetVersion"]["source"]["repoPath"] == "data/train.csv"

    lineage = server.query(
        """query($id: ID!) { lineage(from: $id, direction: DOWNSTREAM, depth: 1) {
             edges { source destination type } } }""",
        {"id": original_id},
    )["lineage"]
    assert {"source": original_id, "destination": rerun["id"], "type": "REPRODUCED"} in lineage[
        "edges"
    ]


def test_altered_data_with_no_other_copy_stops_with_the_digest_mismatch(
    server: Server, history: History
) -> None:
    done = history.reproduce(history.runs["local"], "mismatch")
    assert done.returncode == 2, done.stdout + done.stderr
    run = server.query(RUN, {"id": f"{PROJECT}/run:{history.runs['local']}"})["run"]
    label = run["inputs"][0]["id"].partition(":")[2]
    assert label == f"train@{history.digests['v2'][7:19]}"
    error = done.stderr
    assert f"dataset version {label}: expected {history.digests['v2']}" in error
    assert f"found {history.digests['v4']} at" in error
    assert "code: commit" in done.stdout  # the code was checked out ...
    assert not [line for line in done.stdout.splitlines() if line.startswith("run: ")]  # no run
    assert run["reproductions"] == []


def test_a_dirty_tree_is_reproduced_with_its_recorded_diff(
    server: Server, history: History
) -> None:
    original_id = f"{PROJECT}/run:{history.runs['dirty']}"
    original = server.query(RUN, {"id": original_id})["run"]
    assert original["code"]["git_dirty"] is True
    assert original["code"]["diff"]["stored"] is True
    assert original["codeDiff"]["digest"] == original["code"]["diff"]["digest"]
    assert "+FACTOR = 7.0" in original["codeDiff"]["text"]

    done = history.reproduce(history.runs["dirty"], "dirty")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "code: applied the recorded uncommitted changes" in done.stdout
    rerun_id = server.query(RUN, {"id": original_id})["run"]["reproductions"][0]["id"]
    rerun = server.query(RUN, {"id": rerun_id})["run"]
    assert rerun["code"]["git_commit"] == history.commits["second"]
    assert _metrics(rerun) == _metrics(original) == {"total": 210.0, "rows": 2.0}
    # The re-run's tree holds the same changes, so it records the same diff.
    assert rerun["code"]["diff"]["digest"] == original["code"]["diff"]["digest"]
    assert "FACTOR = 7.0" in (history.tmp / "dirty" / "code" / "train.py").read_text()


def test_changed_params_make_a_derived_run_not_a_reproduction(
    server: Server, history: History
) -> None:
    original_id = f"{PROJECT}/run:{history.runs['remote']}"
    done = history.reproduce(history.runs["remote"], "derived", "--set", "scale=5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verdict: DERIVED run (params changed): 1 of 2 metrics within" in done.stdout
    after = server.query(RUN, {"id": original_id})["run"]
    assert len(after["derivedRuns"]) == 1
    derived = server.query(RUN, {"id": after["derivedRuns"][0]["id"]})["run"]
    assert derived["derivedFrom"] == {"id": original_id}
    assert derived["reproducedFrom"] is None
    assert derived["id"] not in [r["id"] for r in after["reproductions"]]
    assert _params(derived) == {"scale": 5.0}
    assert _metrics(derived) == {"total": 30.0, "rows": 3.0}
    assert derived["code"]["argv"][:2] == ["--scale", "5"]
    edges = server.query(
        """query($id: ID!) { lineage(from: $id, direction: UPSTREAM, depth: 1) {
             edges { source destination type } } }""",
        {"id": derived["id"]},
    )["lineage"]["edges"]
    assert {"source": original_id, "destination": derived["id"], "type": "DERIVED_RUN"} in edges
