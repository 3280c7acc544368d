"""`studbook-server`: the command line of the Studbook services.

Each subcommand is a thin entry point; the wiring lives in the module it calls.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def _run(main: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(main)


def _cmd_projector(args: argparse.Namespace) -> int:
    from studbook_server.projector import run_projector

    return _run(run_projector())


def _cmd_migrate(args: argparse.Namespace) -> int:
    from studbook_server.store_cli import migrate_main

    return _run(migrate_main(args.data_dir))


def _cmd_verify(args: argparse.Namespace) -> int:
    from studbook_server.store_cli import verify_main

    return _run(verify_main(args.seals, args.public_key, args.data_dir))


def _cmd_status(args: argparse.Namespace) -> int:
    from studbook_server.status_cli import status_main

    return _run(status_main(args.json, args.data_dir))


def _cmd_seal(args: argparse.Namespace) -> int:
    from studbook_server.store_cli import seal_main

    return _run(seal_main(args.key, args.log, args.init_key, args.data_dir))


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from studbook_server.rebuild import rebuild_main

    return _run(rebuild_main(args.data_dir))


def _cmd_api(args: argparse.Namespace) -> int:
    from studbook_server.http import serve

    return serve("api", host=args.host, port=args.port)


def _cmd_ingest(args: argparse.Namespace) -> int:
    from studbook_server.http import serve

    return serve("ingest", host=args.host, port=args.port)


def _cmd_up(args: argparse.Namespace) -> int:
    from studbook_server.embedded import run_up

    return run_up(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        throwaway=args.throwaway,
        pg_port=args.pg_port,
        demo=not args.no_demo,
    )


def _cmd_token(args: argparse.Namespace) -> int:
    from studbook_server.tokens_cli import token_main

    return _run(token_main(args, args.data_dir))


def _cmd_demo(args: argparse.Namespace) -> int:
    import os

    from studbook_server.demo import main as demo_main

    argv = ["--url", args.url]
    token = args.token or os.environ.get("STUDBOOK_TOKEN")
    if token:
        argv += ["--token", token]
    if args.workdir:
        argv += ["--workdir", str(args.workdir)]
    return demo_main(argv)


def _cmd_export(args: argparse.Namespace) -> int:
    from studbook_server.transfer import export_main

    return _run(export_main(args.out, args.data_dir))


def _cmd_import(args: argparse.Namespace) -> int:
    from studbook_server.transfer import import_main

    return _run(import_main(args.file, args.data_dir))


def _cmd_import_mlflow(args: argparse.Namespace) -> int:
    import os

    from studbook_server.mlflow.importer import import_main as import_mlflow_main

    token = args.token or os.environ.get("MLFLOW_TRACKING_TOKEN")
    return _run(import_mlflow_main(args.source, args.project, token, args.data_dir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="studbook-server",
        description="Studbook services. Configuration comes from STUDBOOK_* environment variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    for name, handler, help_text, port in (
        ("api", _cmd_api, "serve the GraphQL API over HTTP", 8080),
        ("ingest", _cmd_ingest, "serve the ingest gateway (POST /v1/events) over HTTP", 8081),
        (
            "up",
            _cmd_up,
            "run Studbook in one process (gateway, projector, API); embedded PostgreSQL and no "
            "Kafka unless STUDBOOK_DATABASE_URL / STUDBOOK_KAFKA_BOOTSTRAP say otherwise",
            8080,
        ),
    ):
        p = add(name, handler, help_text)
        p.add_argument(
            "--host", default="127.0.0.1", help="interface to bind (default: %(default)s)"
        )
        p.add_argument("--port", type=int, default=port, help="port to bind (default: %(default)s)")
    up = sub.choices["up"]
    up.add_argument(
        "--data-dir", type=Path, default=None,
        help="where the embedded PostgreSQL keeps its data (default: STUDBOOK_DATA_DIR, else "
        "~/.local/share/studbook; /var/lib/studbook as root)",
    )  # fmt: skip
    up.add_argument(
        "--throwaway", action="store_true", help="use a temporary database, deleted on exit"
    )
    up.add_argument(
        "--pg-port", type=int, default=15433,
        help="port of the embedded PostgreSQL on 127.0.0.1 (default: %(default)s)",
    )  # fmt: skip
    up.add_argument(
        "--no-demo", action="store_true",
        help="do not load the demo history into an empty store on start",
    )  # fmt: skip
    demo = add("demo", _cmd_demo, "report six weeks of example ML work through the SDK")
    demo.add_argument("--url", default="http://127.0.0.1:8080", help="the Studbook to report to")
    demo.add_argument("--token", default=None, help="a token with write scope (STUDBOOK_TOKEN)")
    demo.add_argument("--workdir", type=Path, default=None, help="where the demo's data files go")
    add(
        "projector", _cmd_projector,
        "project events into the PostgreSQL read models: from Kafka when STUDBOOK_KAFKA_BOOTSTRAP "
        "is set, else by tailing the event store",
    )  # fmt: skip
    add("migrate", _cmd_migrate, "apply pending schema migrations to PostgreSQL and exit")
    verify = add(
        "verify", _cmd_verify, "walk the event store's hash chain and report the first mismatch"
    )
    verify.add_argument(
        "--seals", default=None, metavar="LOG",
        help="also check the chain against every seal in this seal log",
    )  # fmt: skip
    verify.add_argument(
        "--public-key", default=None, metavar="PEM",
        help="the seal public key (default: STUDBOOK_SEAL_KEY's public half)",
    )  # fmt: skip
    status = add(
        "status", _cmd_status,
        "how far projection has got (per Kafka partition: end, stored, lag) and the dead letters",
    )  # fmt: skip
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    seal = add(
        "seal", _cmd_seal,
        "sign the event store's current head (Ed25519) and append it to the seal log",
    )  # fmt: skip
    seal.add_argument(
        "--key", default=None, metavar="PEM", help="the private seal key (STUDBOOK_SEAL_KEY)"
    )
    seal.add_argument(
        "--log", default=None, metavar="FILE", help="the seal log to append to (STUDBOOK_SEAL_LOG)"
    )
    seal.add_argument(
        "--init-key", action="store_true",
        help="create a new key at --key (and its public half at <key>.pub) and exit",
    )  # fmt: skip
    add("rebuild", _cmd_rebuild, "replay the event store into fresh read models and swap them in")
    export = add("export-events", _cmd_export, "write the event store as NDJSON (a backup)")
    export.add_argument("--out", default=None, help="file to write (default: standard output)")
    imp = add("import-events", _cmd_import, "append the events of an NDJSON export (idempotent)")
    imp.add_argument("file", help="an NDJSON file written by export-events")
    mlf = add(
        "import-mlflow", _cmd_import_mlflow,
        "copy an MLflow tracking server's experiments and runs into a project (idempotent)",
    )  # fmt: skip
    mlf.add_argument(
        "--from", dest="source", required=True, metavar="URL",
        help="the MLflow tracking server, e.g. http://mlflow-host:5000",
    )  # fmt: skip
    mlf.add_argument("--project", required=True, help="the Studbook project to import into")
    mlf.add_argument(
        "--token", default=None,
        help="a bearer token for the MLflow server (default: MLFLOW_TRACKING_TOKEN)",
    )  # fmt: skip
    token = add("token", _cmd_token, "create, list and revoke API tokens")
    tsub = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = tsub.add_parser("create", help="create a token and print it (shown once)")
    create.add_argument("--name", required=True, help="who or what uses it, e.g. ci-training")
    create.add_argument(
        "--scopes",
        default="read,write",
        help="comma-separated: read, write, approve, admin (%(default)s)",
    )
    create.add_argument(
        "--projects", default="*", help="comma-separated project names, or * for all (%(default)s)"
    )
    tsub.add_parser("list", help="list tokens (never their secrets)")
    revoke = tsub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id")
    for p in (
        sub.choices["migrate"], verify, seal, status, sub.choices["rebuild"], export, imp, mlf,
        create,
        tsub.choices["list"], revoke,
    ):  # fmt: skip
        p.add_argument(
            "--data-dir", type=Path, default=None,
            help="without STUDBOOK_DATABASE_URL: the data folder of a running `studbook-server "
            "up` (default: STUDBOOK_DATA_DIR, else ~/.local/share/studbook; /var/lib/studbook as "
            "root)",
        )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from studbook_server.errors import StudbookError

    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except StudbookError as exc:
        print(f"studbook-server {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
