"""The client programs of `side_by_side.py`, run as `python -c SOURCE CONFIG_JSON`.

* `MLFLOW_CLIENT` runs in the MLflow virtualenv (the pinned `mlflow` client) against a tracking
  server: `mlflow server`, or Studbook's MLflow-compatible surface (`/mlflow/<project>`).
* `STUDBOOK_CLIENT` runs in the project's `.venv` with the Studbook SDK and reads back through
  GraphQL.

Both do the same sweep (runs x params x metrics x steps, two tags per run), then register model
versions and search runs, and print ONE JSON line of timings (CLOCK_MONOTONIC, system-wide on
Linux, so the harness can compare its own clock readings). Tokens come from the environment
(`MLFLOW_TRACKING_TOKEN`, `BENCH_STUDBOOK_TOKEN`), never from the command line, and are never
printed.
"""

from __future__ import annotations

MLFLOW_CLIENT = r"""
import json, sys, time

cfg = json.loads(sys.argv[1])
import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

BATCH = cfg["batch"]  # log_batch's limit: 1000 entities a call (1000 metrics, 100 params/tags)
client = MlflowClient()
calls = {"create_run": [], "log_batch": [], "set_terminated": [], "register": [],
         "search_runs": []}


def timed(name, fn, *a, **kw):
    t0 = time.monotonic()
    out = fn(*a, **kw)
    calls[name].append(time.monotonic() - t0)
    return out


def warm_up():
    # Each gunicorn worker sets up its stores and routes on its first requests (seconds on a
    # busy host): send every kind of call the sweep makes from a few threads at once, so both
    # workers see each before the clock starts (a separate experiment and model, no metrics).
    from concurrent.futures import ThreadPoolExecutor

    wexp = client.create_experiment(cfg["experiment"] + "-warm-up")

    def one(i):
        r = client.create_run(wexp, run_name=f"warm-up-{i}")
        client.log_batch(r.info.run_id, params=[Param("w", str(i))], tags=[RunTag("w", "1")],
                         synchronous=True)
        client.set_terminated(r.info.run_id, "FINISHED")
        client.create_registered_model(f"warm-up-{i}")
        mv = client.create_model_version(f"warm-up-{i}", f"s3://bench/warm-up/{i}",
                                         run_id=r.info.run_id)
        client.get_model_version(f"warm-up-{i}", mv.version)
        client.search_runs([wexp], max_results=10)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(8)))


keys = [f"metric_{k}" for k in range(cfg["metrics"])]
t_start = time.monotonic()
if cfg.get("warm_up", True):
    warm_up()
exp = client.create_experiment(cfg["experiment"])
t_first = time.monotonic()
run_ids = []
for r in range(cfg["runs"]):
    run = timed("create_run", client.create_run, exp, run_name=f"run-{r}")
    rid = run.info.run_id
    run_ids.append(rid)
    params = [Param(f"param_{j}", str(0.001 * (j + 1) * (r + 1))) for j in range(cfg["params"])]
    tags = [RunTag("team", "bench"), RunTag("seed", str(r))]
    ts = int(time.time() * 1000)
    metrics = [
        Metric(k, 1.0 / (step + 1) + i, ts, step)
        for step in range(cfg["steps"]) for i, k in enumerate(keys)
    ]
    # The fastest path: as few calls as the limits allow (params and tags ride with metrics).
    first = max(0, BATCH - len(params) - len(tags))
    timed("log_batch", client.log_batch, rid, metrics=metrics[:first], params=params, tags=tags,
          synchronous=True)
    for i in range(first, len(metrics), BATCH):
        timed("log_batch", client.log_batch, rid, metrics=metrics[i:i + BATCH], synchronous=True)
    timed("set_terminated", client.set_terminated, rid, "FINISHED")
t_ingested = time.monotonic()  # every call above has returned: it is all queryable now

name = "bench-model"
client.create_registered_model(name)
numbers = []
for i in range(cfg["register"] + 1):
    t0 = time.monotonic()
    mv = client.create_model_version(name, f"s3://bench/models/{i}",
                                     run_id=run_ids[i % len(run_ids)])
    got = client.get_model_version(name, mv.version)
    if i:  # the first one is not counted, as for Studbook
        calls["register"].append(time.monotonic() - t0)
    assert str(got.version) == str(mv.version), (got.version, mv.version)
    numbers.append(int(got.version))

page = min(cfg["search_page"], cfg["runs"])
for i in range(cfg["search"] + 1):
    t0 = time.monotonic()
    found = client.search_runs([exp], max_results=cfg["search_page"])
    dt = time.monotonic() - t0
    if i:  # the first one warms the connection and the server's caches
        calls["search_runs"].append(dt)
    assert len(found) == page, (len(found), page)
    assert len(found[0].data.params) == cfg["params"], found[0].data.params
    assert len(found[0].data.metrics) == cfg["metrics"], found[0].data.metrics
    assert found[0].data.tags.get("team") == "bench", found[0].data.tags

print(json.dumps({
    "mlflow_version": mlflow.__version__, "t_start": t_start, "t_first": t_first,
    "t_ingested": t_ingested, "calls": calls, "numbers": numbers, "run_ids": len(run_ids),
}), flush=True)
"""

STUDBOOK_CLIENT = r"""
import http.client, json, os, sys, time
from urllib.parse import urlsplit

cfg = json.loads(sys.argv[1])
TOKEN = os.environ["BENCH_STUDBOOK_TOKEN"]
P = cfg["project"]


class Gql:
    # GraphQL over one kept-alive connection (as the MLflow client keeps its session).
    def __init__(self, base):
        u = urlsplit(base)
        self.host, self.port, self.con = u.hostname, u.port, None

    def q(self, query, **variables):
        body = json.dumps({"query": query, "variables": variables})
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        for attempt in (0, 1):
            try:
                if self.con is None:
                    self.con = http.client.HTTPConnection(self.host, self.port, timeout=120)
                self.con.request("POST", "/graphql", body, headers)
                r = self.con.getresponse()
                data = r.read()
                if r.will_close:
                    self.con.close()
                    self.con = None
                break
            except (OSError, http.client.HTTPException):
                if self.con is not None:
                    self.con.close()
                self.con = None
                if attempt:
                    raise
        doc = json.loads(data)
        if r.status != 200 or doc.get("errors"):
            sys.exit(f"GraphQL answered {r.status}: {data[:800]!r}")
        return doc["data"]


COMPLETED = '''query($p: String!) { searchRuns(project: $p, filter: {status: [COMPLETED]}, first: 1)
  { totalCount } }'''
POINTS = '''query($p: String!, $after: String) { searchRuns(project: $p, first: 100, after: $after)
  { nodes { metrics { count } } pageInfo { hasNextPage endCursor } } }'''
# The full-data page as a table client (the web UI's runs table) asks for it: one JSON value.
SEARCH = '''query($p: String!, $n: Int!) { searchRunTable(project: $p, first: $n) { rows } }'''
VERSION = '''query($id: ID!) { modelVersion(id: $id) { number artifactUri } }'''
NEWEST = '''query($id: ID!) { model(id: $id) { versions(first: 1) { nodes { number artifactUri }
  } } }'''

g = Gql(cfg["api_url"])
expected_points = cfg["runs"] * cfg["metrics"] * cfg["steps"]


def points_stored():
    total, after = 0, None
    while True:
        page = g.q(POINTS, p=P, after=after)["searchRuns"]
        total += sum(m["count"] for n in page["nodes"] for m in n["metrics"])
        if not page["pageInfo"]["hasNextPage"]:
            return total
        after = page["pageInfo"]["endCursor"]


t_start = time.monotonic()
import studbook

studbook.init(url=cfg["ingest_url"], project=P, token=TOKEN, spool_dir=cfg["spool_dir"])
keys = [f"metric_{k}" for k in range(cfg["metrics"])]
g.q(COMPLETED, p=P)  # one request before the clock starts (the MLflow client warms up too)
t_first = time.monotonic()
run_ids = []
for r in range(cfg["runs"]):
    params = {f"param_{j}": 0.001 * (j + 1) * (r + 1) for j in range(cfg["params"])}
    run = studbook.start_run(f"run-{r}", params=params, tags={"team": "bench", "seed": str(r)},
                             experiment=cfg["experiment"])
    for step in range(cfg["steps"]):
        run.log_metrics({k: 1.0 / (step + 1) + i for i, k in enumerate(keys)}, step=step)
    run.finish()
    run_ids.append(run.id)
studbook.flush(timeout=cfg["timeout"])
t_flushed = time.monotonic()

# Queryable: every run COMPLETED in the read models, and every point counted there.
polls = 0
while True:
    polls += 1
    if g.q(COMPLETED, p=P)["searchRuns"]["totalCount"] >= cfg["runs"]:
        t_seen = time.monotonic()
        if points_stored() >= expected_points:
            t_done = t_seen
            break
    if time.monotonic() - t_flushed > cfg["timeout"]:
        sys.exit(f"not queryable {cfg['timeout']} s after the flush "
                 f"({points_stored()} of {expected_points} points)")
    time.sleep(cfg["poll_s"])
stored = points_stored()
assert stored == expected_points, (stored, expected_points)

name = "bench-model"
register, numbers = [], []
for i in range(cfg["register"] + 1):
    uri = f"s3://bench/models/{i}"
    t0 = time.monotonic()
    mv = studbook.register_model(name, uri, run=run_ids[i % len(run_ids)])
    studbook.flush(timeout=cfg["timeout"])
    known = next((getattr(mv, a) for a in ("number", "version")
                  if isinstance(getattr(mv, a, None), int)), None)
    while True:  # until the number is readable through the API
        if known is not None:
            got = g.q(VERSION, id=f"{P}/model_version:{name}@{known}")["modelVersion"]
        else:
            model = g.q(NEWEST, id=f"{P}/model:{name}")["model"]
            nodes = model["versions"]["nodes"] if model else []
            got = nodes[0] if nodes else None
        if got and got["artifactUri"] == uri:
            break
        if time.monotonic() - t0 > cfg["timeout"]:
            sys.exit(f"model version {i + 1} not readable within {cfg['timeout']} s")
        time.sleep(0.002)
    if i:  # the first one (the registry's first use by this client) is not counted
        register.append(time.monotonic() - t0)
    numbers.append(got["number"])

search = []
page = min(cfg["search_page"], cfg["runs"])
for i in range(cfg["search"] + 1):
    t0 = time.monotonic()
    nodes = g.q(SEARCH, p=P, n=cfg["search_page"])["searchRunTable"]["rows"]
    dt = time.monotonic() - t0
    if i:
        search.append(dt)
    assert len(nodes) == page, (len(nodes), page)
    assert len(nodes[0]["params"]) == cfg["params"], nodes[0]["params"]
    assert len(nodes[0]["metrics"]) == cfg["metrics"], nodes[0]["metrics"]
    assert set(nodes[0]["tags"]) >= {"team", "seed"}, nodes[0]["tags"]
    assert all("value" in m and "step" in m for m in nodes[0]["metrics"].values()), nodes[0]

studbook.shutdown(timeout=cfg["timeout"])
print(json.dumps({
    "t_start": t_start, "t_first": t_first, "t_flushed": t_flushed, "t_done": t_done,
    "polls": polls, "points_stored": stored, "calls": {"register": register, "search": search},
    "numbers": numbers,
}), flush=True)
"""
