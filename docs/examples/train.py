"""A small, real training script reporting to Studbook: logistic regression in pure Python.

    STUDBOOK_URL=http://127.0.0.1:8080 STUDBOOK_TOKEN=sbk_... STUDBOOK_PROJECT=churn \
        python docs/examples/train.py --data /tmp/churn-data --epochs 30

It writes a synthetic churn dataset (CSV) to --data if it is not there, registers it as a dataset
version (content digest of the folder), trains, logs the loss and accuracy per epoch, saves the
model as JSON next to the data and registers it as a model version produced by the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
from pathlib import Path

import studbook


def make_data(folder: Path, rows: int, seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "customers.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["tenure", "spend", "tickets", "churned"])
        for _ in range(rows):
            tenure, spend, tickets = rng.uniform(0, 5), rng.uniform(0, 3), rng.randint(0, 6)
            logit = 1.5 - 0.9 * tenure - 0.6 * spend + 0.7 * tickets + rng.gauss(0, 0.5)
            out.writerow([f"{tenure:.3f}", f"{spend:.3f}", tickets, int(logit > 0)])


def load(folder: Path) -> list[tuple[list[float], int]]:
    with (folder / "customers.csv").open() as f:
        return [
            ([float(r["tenure"]), float(r["spend"]), float(r["tickets"])], int(r["churned"]))
            for r in csv.DictReader(f)
        ]


def train(
    rows: list[tuple[list[float], int]], run: studbook.Run, epochs: int, lr: float
) -> list[float]:
    weights = [0.0, 0.0, 0.0, 0.0]  # bias first
    for epoch in range(epochs):
        loss = correct = 0.0
        for x, y in rows:
            z = weights[0] + sum(w * v for w, v in zip(weights[1:], x, strict=True))
            p = 1 / (1 + math.exp(-max(min(z, 30), -30)))
            loss -= y * math.log(p + 1e-12) + (1 - y) * math.log(1 - p + 1e-12)
            correct += (p > 0.5) == bool(y)
            grad = p - y
            weights[0] -= lr * grad
            for i, v in enumerate(x):
                weights[i + 1] -= lr * grad * v
        run.log_metrics({"loss": loss / len(rows), "accuracy": correct / len(rows)}, step=epoch)
    return weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--model", default="churn-clf")
    parser.add_argument("--name", default="logreg")
    args = parser.parse_args()

    if not (args.data / "customers.csv").exists():
        make_data(args.data, args.rows, seed=7)
    studbook.init()  # STUDBOOK_URL, STUDBOOK_PROJECT, STUDBOOK_TOKEN
    data = studbook.dataset_version("customers", path=str(args.data), row_count=args.rows)
    with studbook.start_run(args.name, params={"lr": args.lr, "epochs": args.epochs}) as run:
        run.use(data, role="train")
        weights = train(load(args.data), run, args.epochs, args.lr)
        model_file = args.data.parent / f"{args.name}-model.json"
        model_file.write_text(json.dumps({"weights": weights}))
        run.register_model(args.model, artifact_uri=model_file.as_uri(), framework="pure-python")
    studbook.flush()
    print(json.dumps({"run": run.id, "dataset_version": data.version, "digest": data.digest}))


if __name__ == "__main__":
    main()
