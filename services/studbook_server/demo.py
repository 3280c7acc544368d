"""`studbook-server demo`: six weeks of a team's ML work, reported by real training code.

Everything goes through the SDK to a running Studbook, like a user's training scripts: datasets
written to disk and digested, logistic regressions trained in pure Python with per-epoch metrics,
a run that fails, models registered from the best runs, approvals, aliases moved (a promotion, a
rollback, and one promotion nobody approved) and deployments. `studbook.backdate` places the
history on a fixed timeline, 2026-09-07 to 2026-10-13, so the GraphQL cookbook (docs/graphql.md)
can ask about fixed dates and names; run ids are fixed too (`logreg-v1-01`, ...).

    studbook-server demo --url http://127.0.0.1:8080 --token sbk_...
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

import studbook

PROJECT = "churn"
START = datetime(2026, 9, 7, tzinfo=UTC)  # a Monday; the history spans six weeks from here
FEATURES = ("tenure", "spend", "tickets")


def make_customers(folder: Path, rows: int, seed: int, drift: float = 0.0) -> None:
    """Write a synthetic churn table (`customers.csv`) into ``folder``."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "customers.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*FEATURES, "churned"])
        for _ in range(rows):
            tenure, spend, tickets = rng.uniform(0, 5), rng.uniform(0, 3), rng.randint(0, 6)
            logit = 1.5 - 0.9 * tenure - (0.6 - drift) * spend + 0.7 * tickets + rng.gauss(0, 0.5)
            out.writerow([f"{tenure:.3f}", f"{spend:.3f}", tickets, int(logit > 0)])


Row = tuple[list[float], int]


def make_features(raw: Path, out: Path) -> None:
    """Standardise each feature column (z-scores): the `features` dataset derived from `customers`."""
    rows = load_customers(raw)
    columns = list(zip(*(x for x, _ in rows), strict=True))
    stats = [
        (sum(c) / len(c), (sum(v * v for v in c) / len(c) - (sum(c) / len(c)) ** 2) ** 0.5 or 1.0)
        for c in columns
    ]
    out.mkdir(parents=True, exist_ok=True)
    with (out / "customers.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*FEATURES, "churned"])
        for x, y in rows:
            writer.writerow(
                [*(f"{(v - m) / sd:.5f}" for v, (m, sd) in zip(x, stats, strict=True)), y]
            )


def load_customers(folder: Path, features: tuple[str, ...] = FEATURES) -> list[Row]:
    with (folder / "customers.csv").open() as f:
        return [([float(r[k]) for k in features], int(r["churned"])) for r in csv.DictReader(f)]


def train_logreg(
    rows: list[Row], run: studbook.Run, *, epochs: int, lr: float, l2: float = 0.0
) -> tuple[list[float], float]:
    """Stochastic gradient descent on the log loss; logs loss and accuracy per epoch.

    Returns the weights (bias first) and the last epoch's accuracy.
    """
    split = int(len(rows) * 0.8)
    train, valid = rows[:split], rows[split:]
    weights = [0.0] * (len(FEATURES) + 1)

    def predict(x: list[float]) -> float:
        z = weights[0] + sum(w * v for w, v in zip(weights[1:], x, strict=True))
        return 1 / (1 + math.exp(-max(min(z, 30.0), -30.0)))

    accuracy = 0.0
    for epoch in range(epochs):
        loss = 0.0
        for x, y in train:
            p = predict(x)
            loss -= y * math.log(p + 1e-12) + (1 - y) * math.log(1 - p + 1e-12)
            grad = p - y
            weights[0] -= lr * grad
            for i, v in enumerate(x):
                weights[i + 1] -= lr * (grad * v + l2 * weights[i + 1])
        accuracy = sum((predict(x) > 0.5) == bool(y) for x, y in valid) / len(valid)
        run.log_metrics({"loss": loss / len(train), "val_accuracy": accuracy}, step=epoch)
    return weights, accuracy


@dataclass
class _Clock:
    """The demo's timeline: `at(day, hour)` is that hour (UTC) of that day after START."""

    start: datetime

    def at(self, day: float, hour: float = 0) -> datetime:
        return self.start + timedelta(days=day, hours=hour)


# The people of the demo, and the scopes their own tokens have: alice and carol train and promote,
# bob reviews. `up` makes these tokens and passes them in STUDBOOK_DEMO_TOKENS (a JSON object of
# name -> token); without them every event is sent with the one token given, and the people
# show only as claims.
PERSONAS = {
    "alice": ["read", "write"],
    "bob": ["read", "write", "approve"],
    "carol": ["read", "write"],
}
_persona_tokens: dict[str, str] = {}


def _as(actor: str, url: str, token: str | None) -> None:
    studbook.flush()
    token = _persona_tokens.get(actor, token)
    studbook.init(url=url, project=PROJECT, token=token, actor=actor)


@dataclass
class _Trained:
    run_id: str
    accuracy: float
    weights_file: Path


def _grid(
    lrs: tuple[float, ...], l2s: tuple[float, ...], epochs: int
) -> Iterator[tuple[float, float, int]]:
    for lr in lrs:
        for l2 in l2s:
            yield lr, l2, epochs


# A column the data does not have: the run that asks for it fails, as one does in real life.
BROKEN = (0.03, 0.0, 0)


def _train_runs(
    clock: _Clock, day: float, folder: Path, features: studbook.DatasetVersion, tag: str,
    grid: list[tuple[float, float, int]], workdir: Path,
) -> list[_Trained]:  # fmt: skip
    """Train one run per grid point; run ids are `logreg-<tag>-01`, `-02`, ..."""
    results = []
    for i, (lr, l2, epochs) in enumerate(grid):
        broken = (lr, l2, epochs) == BROKEN
        name = f"logreg lr={lr} l2={l2}" + (" +region" if broken else "")
        with studbook.backdate(clock.at(day + i * 0.4, 9)):
            try:
                with studbook.start_run(
                    name, params={"lr": lr, "l2": l2, "epochs": epochs, "model": "logreg"},
                    tags={"data": tag, "team": "growth"}, experiment="churn-logreg",
                    run_id=f"logreg-{tag}-{i + 1:02d}",
                ) as run:  # fmt: skip
                    run.use(features, role="train")
                    columns = (*FEATURES, "region") if broken else FEATURES
                    rows = load_customers(folder, columns)
                    weights, accuracy = train_logreg(rows, run, epochs=epochs, lr=lr, l2=l2)
                    out = workdir / f"model-{run.id}.json"
                    out.write_text(json.dumps({"weights": weights, "features": FEATURES}))
                    run.log_output(out.as_uri(), name="weights")
                    results.append(_Trained(run.id, accuracy, out))
            except KeyError:
                continue  # recorded as a failed run (KeyError: 'region'), which is the point
    return results


def run_demo(url: str, token: str | None, workdir: Path) -> dict[str, int]:
    """Report the demo history to the Studbook at ``url``; return what it created."""
    clock = _Clock(START)
    workdir.mkdir(parents=True, exist_ok=True)
    _as("alice", url, token)

    def data_version(
        day: float, n: int, rows: int, drift: float
    ) -> tuple[Path, studbook.DatasetVersion, studbook.DatasetVersion]:
        raw, features_dir = workdir / f"customers-v{n}", workdir / f"features-v{n}"
        make_customers(raw, rows, seed=n, drift=drift)
        with studbook.backdate(clock.at(day, 8)):
            customers = studbook.dataset_version(
                "customers", path=str(raw), uri=f"s3://churn-data/customers/v{n}/", row_count=rows,
                schema=[{"name": c, "type": "float"} for c in FEATURES] + [{"name": "churned", "type": "int"}],
            )  # fmt: skip
            with studbook.start_run(
                f"prepare features v{n}", params={"source": customers.version, "scaling": "z-score"},
                run_id=f"prepare-features-v{n}",
            ) as prep:  # fmt: skip
                prep.use(customers, role="other")
                make_features(raw, features_dir)
                features = studbook.dataset_version(
                    "features", path=str(features_dir), uri=f"s3://churn-data/features/v{n}/",
                    parents=[customers], produced_by=prep, row_count=rows,
                )  # fmt: skip
        return features_dir, customers, features

    runs = 0
    # Weeks 0-1: the first dataset, a grid search, one diverging run, the first model.
    raw1, _, f1 = data_version(0, 1, 400, 0.0)
    grid1 = [*_grid((0.01, 0.03, 0.1), (0.0, 0.001, 0.01), 10), BROKEN]
    first = _train_runs(clock, 1, raw1, f1, "v1", grid1, workdir)
    runs += len(grid1) + 1
    best1 = max(first, key=lambda t: t.accuracy)
    with studbook.backdate(clock.at(6, 10)):
        studbook.annotate(
            f"run:{best1.run_id}", "best of the first grid search", labels={"review": "ok"}
        )
    _register(clock, 6, best1, "churn-clf")
    _as("bob", url, token)
    with studbook.backdate(clock.at(7, 9)):
        studbook.approve(
            "churn-clf",
            1,
            comment="validation accuracy above the bar",
            evidence=[f"run:{best1.run_id}"],
        )
        studbook.set_alias("churn-clf", version=1, alias="production")
    with studbook.backdate(clock.at(8, 9)):
        studbook.deploy("churn-clf", 1, "prod", target="k8s/churn-scorer")

    # Weeks 2-3: more data, a second model, a promotion, then a rollback.
    _as("alice", url, token)
    raw2, _, f2 = data_version(14, 2, 600, 0.2)
    grid2 = list(_grid((0.01, 0.02, 0.03), (0.0, 0.001, 0.01), 12))
    second = _train_runs(clock, 14, raw2, f2, "v2", grid2, workdir)
    runs += len(grid2) + 1
    best2 = max(second, key=lambda t: t.accuracy)
    _register(clock, 19, best2, "churn-clf")
    _register(clock, 19.5, second[0], "churn-ranker")
    _as("bob", url, token)
    with studbook.backdate(clock.at(20, 9)):
        studbook.approve("churn-clf", 2, comment="better on the new customers")
    with studbook.backdate(clock.at(21, 9)):
        studbook.set_alias("churn-clf", version=2, alias="production")
        studbook.deploy("churn-clf", 2, "prod", target="k8s/churn-scorer")
    with studbook.backdate(clock.at(24, 15)):
        studbook.annotate(
            "model:churn-clf", "v2 over-predicts churn for new customers: rolling back"
        )
    with studbook.backdate(clock.at(25, 9)):
        studbook.set_alias("churn-clf", version=1, alias="production")
        studbook.deploy("churn-clf", 1, "prod", target="k8s/churn-scorer")
    with studbook.backdate(clock.at(26, 9)):
        studbook.reject("churn-clf", 2, comment="drift on new customers")

    # Weeks 4-5: a third dataset, a third model promoted without an approval.
    _as("alice", url, token)
    raw3, _, f3 = data_version(28, 3, 800, 0.1)
    grid3 = list(_grid((0.02, 0.05, 0.08), (0.0, 0.002, 0.005), 14))
    third = _train_runs(clock, 28, raw3, f3, "v3", grid3, workdir)
    runs += len(grid3) + 1
    best3 = max(third, key=lambda t: t.accuracy)
    _register(clock, 33, best3, "churn-clf")
    _register(clock, 33.5, third[-1], "churn-ranker")
    with studbook.backdate(clock.at(34, 9)):
        studbook.set_alias("churn-clf", version=3, alias="staging")
        studbook.set_alias("churn-ranker", version=2, alias="candidate")
    _as("carol", url, token)
    with studbook.backdate(clock.at(36, 17)):
        studbook.set_alias("churn-clf", version=3, alias="production")  # nobody approved v3
    studbook.flush()
    return {"runs": runs, "datasets": 2, "dataset_versions": 6, "models": 2, "model_versions": 5}


def _register(clock: _Clock, day: float, trained: _Trained, model: str) -> None:
    with studbook.backdate(clock.at(day, 11)):
        studbook.annotate(f"run:{trained.run_id}", f"registered as {model}")
        # Registering from a finished run: the run id ties the model version to its lineage.
        studbook.register_model(
            model, artifact_uri=trained.weights_file.as_uri(), run=trained.run_id,
            framework="pure-python-logreg",
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(prog="studbook-server demo", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--token", default=os.environ.get("STUDBOOK_TOKEN"))
    parser.add_argument("--workdir", type=Path, default=None, help="where demo data files go")
    args = parser.parse_args(argv)
    _persona_tokens.update(orjson.loads(os.environ.get("STUDBOOK_DEMO_TOKENS") or "{}"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="studbook-demo-"))
    made = run_demo(args.url, args.token, workdir)
    studbook.shutdown()
    print(f"demo: reported {made} to {args.url} (data files in {workdir})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
