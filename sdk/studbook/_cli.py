"""The `studbook` command (installed with the SDK): ``studbook reproduce <run>``.

Only the standard library and the SDK's own dependencies: no server package is needed. See
docs/reproduce.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from studbook._version import __version__

EXAMPLES = """\
examples:
  studbook reproduce churn/run:0190f1c2-7a3b-7c4d-8e5f-0123456789ab
  studbook reproduce 0190f1c2-... --project churn --yes --rtol 1e-4
  studbook reproduce churn/run:logreg-v1-01 --set lr=0.01      (a derived run)

exit status: 0 reproduced (or a derived run completed), 1 the re-run differs or failed,
2 it could not be re-run (the message says why)
"""


def _pair(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _indexed(text: str) -> tuple[int, str]:
    index, eq, value = text.partition("=")
    if not eq or not index.isdigit():
        raise argparse.ArgumentTypeError(f"expected INDEX=VALUE (e.g. 3=--token=...), got {text!r}")
    return int(index), value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="studbook", description="Studbook's command line.")
    top.add_argument("--version", action="version", version=f"studbook {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser(
        "reproduce",
        help="re-run a recorded run: its code, environment, data and params, checked",
        description="Re-run a recorded run from its record: the commit (with the recorded "
        "uncommitted changes) in a fresh worktree, the recorded packages in a fresh virtual "
        "environment, every input dataset version verified by digest, the recorded command "
        "line; then compare the new run's metrics with the original's.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="the run: <project>/run:<id>, or a run id with --project")
    p.add_argument("--project", help="the run's project (default: STUDBOOK_PROJECT)")
    p.add_argument(
        "--url",
        help="Studbook's url (default: STUDBOOK_URL, else http://127.0.0.1:8080); the GraphQL "
        "API is <url>/graphql unless STUDBOOK_GRAPHQL_URL says otherwise",
    )
    p.add_argument(
        "--repo", type=Path, help="a local git repository holding the commit (default: the one "
        "around the current directory; else the recorded remote is cloned)",
    )  # fmt: skip
    p.add_argument(
        "--workdir", type=Path,
        help="an empty folder for the worktree, environment and downloads (default: a new "
        "folder under ~/.cache/studbook/reproductions)",
    )  # fmt: skip
    p.add_argument(
        "--set", dest="changes", metavar="KEY=VALUE", type=_pair, action="append", default=[],
        help="change a param on the command line (repeatable): the re-run is then a derived "
        "run, not a reproduction",
    )  # fmt: skip
    p.add_argument(
        "--arg", dest="args", metavar="INDEX=VALUE", type=_indexed, action="append", default=[],
        help="give argument INDEX (0-based) of the recorded command line again, whole: for "
        "arguments masked as secrets when recorded",
    )  # fmt: skip
    p.add_argument(
        "--rtol", type=float, default=1e-6,
        help="relative tolerance of the metric comparison (default: 1e-6)",
    )  # fmt: skip
    p.add_argument(
        "--atol", type=float, default=0.0,
        help="absolute tolerance of the metric comparison (default: 0)",
    )  # fmt: skip
    p.add_argument("--python", help="the interpreter for the new environment (default: one "
                   "with the recorded version)")  # fmt: skip
    p.add_argument("--find-links", action="append", default=[], metavar="DIR_OR_URL",
                   help="also look for packages here (repeatable; passed to uv or pip)")  # fmt: skip
    p.add_argument("--index-url", help="the package index (passed to uv or pip)")
    p.add_argument("--no-index", action="store_true", help="use no package index, only "
                   "--find-links (passed to uv or pip)")  # fmt: skip
    p.add_argument(
        "--timeout", type=float, default=60.0,
        help="seconds to wait for the new run to reach Studbook after it ends (default: 60)",
    )  # fmt: skip
    p.add_argument("-y", "--yes", action="store_true", help="go ahead without asking")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `studbook` console script."""
    args = parser().parse_args(argv)
    from studbook._errors import StudbookError
    from studbook._reproduce import environment
    from studbook._reproduce.runner import Options, reproduce

    options = Options(
        run=args.run,
        project=args.project,
        url=args.url,
        repo=args.repo,
        workdir=args.workdir,
        changes=dict(args.changes),
        args=dict(args.args),
        rtol=args.rtol,
        atol=args.atol,
        python=args.python,
        index=environment.Index(tuple(args.find_links), args.index_url, args.no_index),
        yes=args.yes,
        dry_run=args.dry_run,
        timeout_s=args.timeout,
    )
    try:
        return reproduce(options)
    except StudbookError as exc:
        print(f"studbook reproduce: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("studbook reproduce: interrupted", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
