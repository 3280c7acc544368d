"""`python -m studbook_server.graphql > schema/graphql/schema.graphql`: print the SDL."""

from __future__ import annotations

import sys

from studbook_server.graphql import export_sdl

sys.stdout.write(export_sdl())
