"""The summary and the Markdown of `side_by_side.py`: pure functions of the measured samples
(no I/O), unit-tested in tests/test_side_by_side.py.

A sample is one system's figures from one repetition (`SYSTEMS` order): a dict with
`ingest_points_per_s`, `register_ms`, `search_ms_median`, `search_ms_p95`, `lag_after_flush_s`
and `storage_bytes_per_point`.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

SYSTEMS = ("mlflow", "studbook_kafka", "studbook_embedded")
STUDBOOK = SYSTEMS[1:]
TITLES = {
    "mlflow": "MLflow",
    "studbook_kafka": "Studbook (Kafka)",
    "studbook_embedded": "Studbook (embedded)",
}
# Row key -> (workload as the table says it, how to print a value).
ROWS: dict[str, tuple[str, str]] = {
    "ingest_points_per_s": ("ingest, points/s until queryable", "rate"),
    "register_ms": ("register a version, until numbered and readable (median)", "ms"),
    "search_ms_median": (
        "search {page} runs with full run data (params, metrics, tags), median",
        "ms",
    ),
    "search_ms_p95": ("the same search, p95", "ms"),
    "lag_after_flush_s": ("projection lag after the last flush (median; max)", "s"),
    "storage_bytes_per_point": ("storage per metric point (tables + indexes)", "bytes"),
}
GOALS = {
    "ingest_points_per_s": ">= 50x MLflow",
    "register_ms": "<= 0.5x MLflow",
    "search_ms_median": "p95 <= 20 ms at 100k runs",
    "search_ms_p95": "<= 20 ms at 100k runs",
    "lag_after_flush_s": "p99 <= 200 ms at 5k events/s",
    "storage_bytes_per_point": "<= 40 B",
}
# Per-call medians of the MLflow client (same program on both servers).
COMPAT_CALLS = ("create_run", "log_batch", "set_terminated", "register", "search_runs")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def p95(values: Sequence[float]) -> float:
    if len(values) < 2:
        return float(values[0])
    return float(statistics.quantiles(values, n=20, method="inclusive")[18])


def summarize(samples: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, Any]:
    """Per row: each system's median over repetitions, the Studbook / MLflow ratios (the
    median of the ratios of the same repetition) and, for the lag, the worst repetition."""
    rows: dict[str, Any] = {}
    reps = min(len(samples[s]) for s in SYSTEMS)
    for row in ROWS:
        entry: dict[str, Any] = {s: round(median([x[row] for x in samples[s]]), 3) for s in SYSTEMS}
        if row != "lag_after_flush_s":
            ratios = {}
            for s in STUDBOOK:
                per_rep = [
                    samples[s][i][row] / samples["mlflow"][i][row]
                    for i in range(reps)
                    if samples["mlflow"][i][row]
                ]
                ratios[s] = round(median(per_rep), 3) if per_rep else None
            entry["ratio_to_mlflow"] = ratios
        else:
            entry["max"] = {s: round(max(x[row] for x in samples[s]), 3) for s in SYSTEMS}
        rows[row] = entry
    return rows


def goals_met(rows: Mapping[str, Any]) -> dict[str, dict[str, bool | None]]:
    """Each goal, per Studbook flavor, judged on this run's figures (the search and lag goals
    are set at a larger scale than a default run: see the Markdown's notes)."""
    out: dict[str, dict[str, bool | None]] = {}
    for s in STUDBOOK:
        ingest = rows["ingest_points_per_s"]["ratio_to_mlflow"][s]
        register = rows["register_ms"]["ratio_to_mlflow"][s]
        out[s] = {
            "ingest_50x_mlflow": None if ingest is None else ingest >= 50,
            "register_half_of_mlflow": None if register is None else register <= 0.5,
            "search_p95_20ms": rows["search_ms_p95"][s] <= 20,
            "lag_200ms": rows["lag_after_flush_s"]["max"][s] <= 0.2,
            "storage_40_bytes": rows["storage_bytes_per_point"][s] <= 40,
        }
    return out


def compat_summary(
    mlflow_calls: Sequence[Mapping[str, Sequence[float]]],
    studbook_calls: Mapping[str, Sequence[Mapping[str, Sequence[float]]]],
) -> dict[str, Any]:
    """Per-call medians (ms) of the MLflow client on `mlflow server` and on each Studbook
    flavor that ran it, and the ratio Studbook / MLflow (median of the same repetitions)."""

    def med(calls: Mapping[str, Sequence[float]], name: str) -> float | None:
        return median(calls[name]) * 1000 if calls.get(name) else None

    out: dict[str, Any] = {"mlflow_ms": {}, "studbook_ms": {}, "ratio_to_mlflow": {}}
    for name in COMPAT_CALLS:
        ms = [v for c in mlflow_calls if (v := med(c, name)) is not None]
        out["mlflow_ms"][name] = round(median(ms), 2) if ms else None
    for flavor, reps in studbook_calls.items():
        out["studbook_ms"][flavor] = {}
        out["ratio_to_mlflow"][flavor] = {}
        for name in COMPAT_CALLS:
            vals, ratios = [], []
            for i, calls in enumerate(reps):
                v = med(calls, name)
                if v is None:
                    continue
                vals.append(v)
                base = med(mlflow_calls[i], name) if i < len(mlflow_calls) else None
                if base:
                    ratios.append(v / base)
            out["studbook_ms"][flavor][name] = round(median(vals), 2) if vals else None
            out["ratio_to_mlflow"][flavor][name] = round(median(ratios), 3) if ratios else None
    return out


# ---------------------------------------------------------------------------------- Markdown


def _value(kind: str, v: float | None) -> str:
    if v is None:
        return "n/a"
    if kind == "rate":
        return f"{v:,.0f}"
    if kind == "ms":
        return f"{v:,.1f} ms"
    if kind == "s":
        return f"{v:.2f} s"
    return f"{v:,.0f} B"


def _ratio(row: str, r: float | None) -> str:
    if r is None:
        return ""
    if row == "ingest_points_per_s":
        return f" ({r:.1f}x)"
    if r > 1:
        return f" ({r:.1f}x slower)" if row.endswith("_ms") or "ms_" in row else f" ({r:.2f}x)"
    return f" ({r:.2f}x)"


def table(rows: Mapping[str, Any], page: int) -> str:
    head = ["workload", *(TITLES[s] for s in SYSTEMS), "goal"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, (title, kind) in ROWS.items():
        entry = rows[row]
        cells = [title.format(page=page)]
        for s in SYSTEMS:
            if row == "lag_after_flush_s":
                cells.append(
                    "0 (synchronous)"
                    if s == "mlflow"
                    else f"{_value(kind, entry[s])}; {_value(kind, entry['max'][s])}"
                )
                continue
            text = _value(kind, entry[s])
            if s != "mlflow":
                text += _ratio(row, entry["ratio_to_mlflow"][s])
            cells.append(text)
        cells.append(GOALS[row])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals_table(met: Mapping[str, Mapping[str, bool | None]]) -> str:
    names = {
        "ingest_50x_mlflow": "ingest >= 50x MLflow",
        "register_half_of_mlflow": "register <= 0.5x MLflow",
        "search_p95_20ms": "search p95 <= 20 ms (goal at 100k runs)",
        "lag_200ms": "lag <= 200 ms (goal: p99 at 5k events/s; here the worst repetition)",
        "storage_40_bytes": "storage <= 40 B per point",
    }
    lines = ["| goal | " + " | ".join(TITLES[s] for s in STUDBOOK) + " |", "|---|---|---|"]
    for key, title in names.items():
        cells = []
        for s in STUDBOOK:
            v = met[s][key]
            cells.append("n/a" if v is None else ("**met**" if v else "missed"))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compat_markdown(compat: Mapping[str, Any]) -> str:
    if not compat.get("ran"):
        return "Not available: " + compat.get(
            "reason", "the server has no MLflow-compatible surface"
        )
    s = compat["summary"]
    flavors = list(s["studbook_ms"])
    head = ["call (median)", "mlflow server", *(TITLES[f] for f in flavors)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in COMPAT_CALLS:
        cells = [
            f"`{name}`" if name != "register" else "`create_model_version` + `get_model_version`"
        ]
        cells.append(_value("ms", s["mlflow_ms"][name]))
        for f in flavors:
            r = s["ratio_to_mlflow"][f][name]
            cells.append(_value("ms", s["studbook_ms"][f][name]) + (f" ({r:.2f}x)" if r else ""))
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines)
    for f, why in compat.get("failed", {}).items():
        out += f"\n\n{TITLES[f]}: the MLflow client failed: {why}"
    return out


# What the profiles in bench/README.md found behind each goal; kept here so every rewrite of
# docs/benchmarks.md carries it. Revise it when a profile changes.
WHAT_LIMITS = """\
### What limits each goal, as profiled

* **Ingest.** The SDK no longer waits on the network at a run's end (0.13 ms instead of 138 ms
  per run; `bench/sdk_sweep.py`: 1.37x points/s until queryable). What remains is the server
  pipeline sharing the host's cores: in the projector, decoding and validating metric events
  take 37% of its time, the event store's append and COPY 33%, the chunk writes 19% and the
  projection rule 11% (`bench/metric_storage.py --profile`, bench/README.md). What would move
  it: validating a metric batch without parsing each point (a timestamp's second is now parsed
  once: 0.72x), decoding the next batch while the previous one is stored, and cores: at this
  size each of gateway, projector and PostgreSQL is busy at once.
* **Register.** The number is in the gateway's answer (one round trip,
  [write path](write-path.md#model-version-numbers-are-given-on-acceptance)); what this row
  adds is reading the version back, which waits for the projector to commit the batch holding
  it. With Kafka that is the freshness below.
* **Search.** At 100k runs a page of 100 with full data costs 1.43x the lean page through
  `searchRunTable` (6.35x through the list fields the web UI asks for), and the rest is the
  GraphQL executor: the list shape executes about 7,600 fields per page
  (`bench/graphql_queries.py --scenario search --profile-shape lists`). On this shared host a
  bare `{ __typename }` took 15-17 ms at p50, so the 20 ms goal cannot be shown here; what
  would move it: a quiet host, and the web UI on `searchRunTable`.
* **Lag.** With Kafka the batching adds at most `STUDBOOK_BATCH_LATENCY_MS` (25 ms); the lag
  measured is backlog: on the loaded host the projector stored 1.3k-2.2k events/s of a steady
  stream (`bench/freshness.py`), so at 5k events/s events queue. It moves with the projector's
  throughput (the ingest row).
* **Storage.** The read models hold a point in about 23 B (chunks of 1024 points, pglz: values
  8 B, times 4.5 B, steps 3.3 B); the event store keeps every point's JSON, about 26 B each
  compressed (`bench/metric_storage.py`), and this row also counts the runs' other events. What
  would move it: lz4 on the event store (this PostgreSQL is built without it), or metric
  batches kept in the event store in a binary form.
"""


def markdown(report: Mapping[str, Any]) -> str:
    w, m = report["workload"], report["machine"]
    page = w["search_page"]
    load = [" / ".join(f"{x:g}" for x in v) for v in m["loadavg_start_end"]]
    busy = max(v[0] for v in m["loadavg_start_end"]) > (m["cpus"] or 1)
    noise = (
        " The 1-minute load average was above the CPU count: other work shared the host during"
        " the run, which slows every system; compare the ratios more than the absolute figures."
        if busy
        else " The host is shared: compare the ratios more than the absolute figures."
    )
    return f"""# Benchmarks: Studbook beside MLflow

Written by `bench/side_by_side.py` (do not edit by hand; rerun it). Last run {report["finished_at"]}:

```sh
{report["command"]}
```

Every figure is the median of {w["repeat"]} repetitions, interleaved (MLflow, Studbook with Kafka,
Studbook embedded, then again), each on fresh databases of the same PostgreSQL and freshly started
servers. A ratio is Studbook / MLflow in the same repetition (the median of those).

## The sweep

{w["runs"]} runs x {w["params"]} params x {w["metrics"]} metrics x {w["steps"]} steps
({w["points"]:,} metric points), two tags per run; then {w["register"]} model versions registered and
{w["search"]} searches for a page of {page} runs.

{table(report["rows"], page)}

### Goals, on this run's figures

{goals_table(report["goals_met"])}

{WHAT_LIMITS}
## How each row is measured

* **MLflow**: `mlflow server` {m["mlflow_version"]} ({w["mlflow_workers"]} gunicorn workers,
  `--backend-store-uri postgresql://...` on a fresh database, `--serve-artifacts`), driven by the
  `mlflow` client (`MlflowClient`) in its own virtualenv: per run `create_run`, `log_batch` of
  {w["batch"]} entities (params and tags ride in the first call, `synchronous=True`) and
  `set_terminated`. A call returns once the data is committed, so it is queryable then: the
  ingest rate runs from the first `create_run` to the last `set_terminated`, and its lag is 0.
* **Studbook (Kafka)**: `studbook-server ingest`, `projector` and `api` processes on a fresh
  database and a fresh Kafka topic (4 partitions). **Studbook (embedded)**: `studbook-server up`
  (no Kafka: the event store is the transport) on a fresh database of the same PostgreSQL.
  The client is the SDK (`start_run` with params and tags, `run.log_metrics` per step,
  `run.finish`, `studbook.flush`) in one process; the ingest rate runs from the first
  `start_run` until GraphQL (`searchRuns`) shows every run COMPLETED and every point counted
  (polled every {w["poll_ms"]} ms).
* **register**: MLflow `create_model_version` + `get_model_version`; Studbook
  `studbook.register_model` + `flush`, then GraphQL until the new version's number is readable.
* **search**: MLflow `search_runs(max_results={page})` (params, latest metrics, tags); Studbook
  GraphQL `searchRunTable(first: {page}) {{ rows }}` (each row with its params, latest metrics
  and tags; what the web UI's runs table reads). The first call is not counted.
* **lag**: from the SDK's last `flush` returning until the read models have the last event (the
  poll above: resolution about {w["poll_ms"]} ms plus one GraphQL call).
* **storage**: `pg_total_relation_size` (heap, TOAST, indexes) after the sweep, divided by the
  points. MLflow: `metrics` + `latest_metrics`. Studbook: every read-model table with `metric`
  in its name plus the whole event store (`public.events`, which also holds the runs' other
  events); Kafka's copy of the events is not counted.
* The search goal is set at 100k runs and the lag goal at 5k events/s sustained: this sweep is
  smaller, so those two "met" only say what they say at this size.

## The MLflow client against Studbook

The same MLflow program ({w["runs"]} runs x {w["params"]} params x {w["metrics"] * w["steps"]}
metric points via `log_batch`, the registry calls, `search_runs`) pointed at Studbook's
MLflow-compatible surface (`MLFLOW_TRACKING_URI=http://host:port/mlflow/<project>`, the token as
`MLFLOW_TRACKING_TOKEN`), per-call medians beside `mlflow server` in the same repetitions:

{compat_markdown(report["mlflow_client_on_studbook"])}

## Machine

{m["cpus"]} CPUs, {m["memory_gib"]} GiB of memory, Python {m["python"]}, PostgreSQL {m["postgres"]},
MLflow {m["mlflow_version"]}; code at commit `{m["code"].get("commit")}`
(uncommitted changes: {m["code"].get("uncommitted_changes")}). Load average (1, 5, 15 min) before
{load[0]}, after {load[1]}.{noise} The harness took {report["wall_s"]:.0f} s.
"""
