"""`studbook-server token create|list|revoke`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from studbook_server import auth
from studbook_server.adapters import postgres
from studbook_server.config import load_settings
from studbook_server.locate import connection, resolve_database_url


async def token_main(args: argparse.Namespace, data_dir: Path | None = None) -> int:
    url = resolve_database_url(load_settings(), data_dir)
    async with connection(url) as con:
        await postgres.migrate(con)
        if args.action == "create":
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            projects = [p.strip() for p in args.projects.split(",") if p.strip()]
            try:
                token_id, token = await auth.create_token(con, args.name, scopes, projects)
            except ValueError as exc:
                print(f"token create: {exc}", file=sys.stderr)
                return 2
            print(token)
            print(
                f"created token {token_id} ({args.name}): scopes {','.join(sorted(set(scopes)))}, "
                f"projects {','.join(sorted(set(projects)))}. It is shown only now; store it.",
                file=sys.stderr,
            )
            return 0
        if args.action == "revoke":
            if await auth.revoke_token(con, args.token_id):
                print(f"revoked token {args.token_id}", file=sys.stderr)
                return 0
            print(f"token revoke: no active token {args.token_id}", file=sys.stderr)
            return 1
        for t in await auth.list_tokens(con):
            state = f"revoked {t.revoked_at:%Y-%m-%d}" if t.revoked_at else "active"
            print(
                f"{t.token_id}  {t.name:<24} {','.join(t.scopes):<18} {','.join(t.projects):<20} {state}"
            )
        return 0
