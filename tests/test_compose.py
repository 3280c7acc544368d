"""Static checks of the deployment files: docker-compose.yml and the Dockerfile.

Pure and fast: no Docker, no services. The compose file is validated against the vendored Compose
Specification schema (tests/data/compose-spec.json, see tests/data/README.md), then against what
the project itself declares: the `studbook-server` subcommands and the console scripts.

Every check is a function returning a list of problems, and each has a test showing that a
deliberately broken copy is rejected, so none of them can pass vacuously.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from studbook_server.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"
SCHEMA_FILE = Path(__file__).resolve().parent / "data" / "compose-spec.json"

Doc = dict[str, Any]

# Keys whose value is a secret: it must come from interpolation, never be written in the file.
SECRET_KEY = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|PRIVATE_KEY", re.IGNORECASE)
# `scheme://user:password@host`: the password part of a connection URL (maybe `${VAR:?a message}`).
URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:(\$\{[^}]*\}|[^@\s/]*)@", re.IGNORECASE)
# Interpolation with no fallback value: `${VAR}`, `${VAR?msg}` or `${VAR:?msg}` (not `${VAR:-x}`).
REQUIRED_INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?\?[^}]*)?\}")
HEALTHZ_PORT = re.compile(r":(\d+)/healthz\b")


# --- loading -------------------------------------------------------------------------------------


def load_compose(path: Path = COMPOSE_FILE) -> Doc:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict), f"{path.name} is not a YAML mapping"
    return doc


def load_schema(path: Path = SCHEMA_FILE) -> Doc:
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(schema, dict), f"{path.name} is not a JSON object"
    return schema


def console_scripts(path: Path = PYPROJECT) -> set[str]:
    with path.open("rb") as f:
        pyproject = tomllib.load(f)
    return set(pyproject["project"]["scripts"])


def cli_subcommands(parser: argparse.ArgumentParser) -> set[str]:
    """The subcommand names registered on `parser` (its argparse subparsers' choices)."""
    names: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            names.update(action.choices)
    return names


def _uri_key(uri: str) -> str:
    """`https://json-schema.org/draft-07/schema` and `http://...draft-07/schema#` are one draft."""
    return re.sub(r"^https://", "http://", uri.strip()).rstrip("#").rstrip("/")


def validator_class(schema: Mapping[str, Any]) -> type[jsonschema.protocols.Validator]:
    """The jsonschema validator class for the draft named by the schema's `$schema`.

    Matched by hand, because jsonschema's own lookup wants the exact metaschema URI and the compose
    schema may spell its draft URI without the trailing `#`; an unknown draft is an error here,
    not a silent fallback to the latest one.
    """
    wanted = _uri_key(schema["$schema"])
    candidates: tuple[type[jsonschema.protocols.Validator], ...] = (
        jsonschema.Draft4Validator,
        jsonschema.Draft6Validator,
        jsonschema.Draft7Validator,
        jsonschema.Draft201909Validator,
        jsonschema.Draft202012Validator,
    )
    for cls in candidates:
        meta = cls.META_SCHEMA
        if _uri_key(str(meta.get("$id", meta.get("id", "")))) == wanted:
            return cls
    raise LookupError(f"no jsonschema validator for $schema {schema['$schema']!r}")


# --- checks: each returns a list of problems (empty = fine) --------------------------------------


def schema_problems(doc: Doc, schema: Doc) -> list[str]:
    validator = validator_class(schema)(schema)
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]


def _services(doc: Doc) -> dict[str, Doc]:
    services = doc.get("services") or {}
    assert isinstance(services, dict)
    return services


def _command(service: Doc) -> list[str] | None:
    command = service.get("command")
    if command is None:
        return None
    if isinstance(command, str):
        return command.split()
    return [str(part) for part in command]


def _depends_on(service: Doc) -> dict[str, str]:
    """Dependency name -> condition (`service_started` for the short list form)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _parses(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """None if `studbook-server ARGV` parses, otherwise argparse's complaint."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            return stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue() else str(exc)
    return None


def command_problems(doc: Doc, parser: argparse.ArgumentParser) -> list[str]:
    """Services built from this repo run `studbook-server` (the ENTRYPOINT) with their `command`:
    the first word must be a registered subcommand, and the whole line must parse."""
    subcommands = cli_subcommands(parser)
    problems: list[str] = []
    for name, service in _services(doc).items():
        if "build" not in service:
            continue
        command = _command(service)
        if not command:
            problems.append(f"{name}: built from this repo but has no command (a subcommand)")
            continue
        if command[0] not in subcommands:
            problems.append(
                f"{name}: command {command[0]!r} is not a studbook-server subcommand "
                f"(known: {', '.join(sorted(subcommands))})"
            )
            continue
        complaint = _parses(parser, command)
        if complaint is not None:
            problems.append(f"{name}: `studbook-server {' '.join(command)}` fails: {complaint}")
    return problems


def build_context_problems(doc: Doc, root: Path = ROOT) -> list[str]:
    problems: list[str] = []
    for name, service in _services(doc).items():
        build = service.get("build")
        if build is None:
            continue
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile"
        if isinstance(build, dict):
            dockerfile = build.get("dockerfile", dockerfile)
        if not (root / context / dockerfile).is_file():
            problems.append(f"{name}: build context {context!r} has no {dockerfile}")
    return problems


def depends_on_problems(doc: Doc) -> list[str]:
    services = _services(doc)
    problems: list[str] = []
    for name, service in services.items():
        for dep, condition in _depends_on(service).items():
            if dep not in services:
                problems.append(f"{name}: depends_on unknown service {dep!r}")
            elif dep == name:
                problems.append(f"{name}: depends on itself")
            elif condition == "service_healthy" and "healthcheck" not in services[dep]:
                problems.append(f"{name}: waits for {dep!r} to be healthy; it has no healthcheck")
    return problems


def one_shot_services(doc: Doc) -> set[str]:
    """Services that others wait on to *finish* (`service_completed_successfully`)."""
    return {
        dep
        for service in _services(doc).values()
        for dep, condition in _depends_on(service).items()
        if condition == "service_completed_successfully"
    }


def _healthcheck_enabled(check: Doc | None) -> bool:
    if not check or check.get("disable") in (True, "true"):
        return False
    return check.get("test") not in (None, "NONE", ["NONE"])


def healthcheck_problems(doc: Doc) -> list[str]:
    """Every long-running service has an enabled healthcheck; one-shots must not restart; an HTTP
    service's /healthz probe targets the port its command binds."""
    one_shot = one_shot_services(doc)
    problems: list[str] = []
    for name, service in _services(doc).items():
        if name in one_shot:
            if str(service.get("restart", "no")) != "no":
                problems.append(f"{name}: one-shot service must have restart: 'no'")
            continue
        check = service.get("healthcheck")
        if check is None or not _healthcheck_enabled(check):
            problems.append(f"{name}: long-running service has no healthcheck")
            continue
        command = _command(service) or []
        if "--port" in command:
            port = command[command.index("--port") + 1]
            test = " ".join(check["test"]) if isinstance(check["test"], list) else check["test"]
            probed = HEALTHZ_PORT.findall(test)
            if probed != [port]:
                problems.append(f"{name}: serves on port {port}; its healthcheck probes {probed}")
    return problems


def _environment(service: Doc) -> Iterator[tuple[str, str]]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        for item in env:
            key, _, value = str(item).partition("=")
            yield key, value
    else:
        for key, value in env.items():
            yield str(key), "" if value is None else str(value)


def _is_interpolated(value: str) -> bool:
    return REQUIRED_INTERPOLATION.fullmatch(value) is not None


def secret_problems(doc: Doc) -> list[str]:
    """No secret is written into the file: secret-named variables and the password part of
    connection URLs must be `${VAR}` / `${VAR:?msg}` interpolation, without a default."""
    problems: list[str] = []
    for name, service in _services(doc).items():
        for key, value in _environment(service):
            if SECRET_KEY.search(key) and value and not _is_interpolated(value):
                problems.append(f"{name}: {key} holds a literal secret; use ${{VAR:?message}}")
            for password in URL_PASSWORD.findall(value):
                if password and not _is_interpolated(password):
                    problems.append(f"{name}: {key} has a literal password in its URL")
    return problems


def entrypoint_problems(dockerfile: str, scripts: set[str]) -> list[str]:
    """The image's ENTRYPOINT (last one wins) is exec form and runs a declared console script."""
    text = re.sub(r"\\\r?\n", " ", dockerfile)  # join continuation lines
    entrypoints = [
        m.group(1).strip()
        for m in re.finditer(r"^\s*ENTRYPOINT\s+(.+)$", text, re.IGNORECASE | re.MULTILINE)
    ]
    if not entrypoints:
        return ["Dockerfile has no ENTRYPOINT"]
    try:
        argv = json.loads(entrypoints[-1])
    except json.JSONDecodeError:
        return [f"ENTRYPOINT {entrypoints[-1]} is not exec (JSON array) form"]
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        return [f"ENTRYPOINT {entrypoints[-1]} is not a non-empty list of strings"]
    if argv[0] not in scripts:
        return [f"ENTRYPOINT runs {argv[0]!r}, not a [project.scripts] entry {sorted(scripts)}"]
    return []


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> Doc:
    return load_schema()


@pytest.fixture(scope="module")
def compose() -> Doc:
    return load_compose()


@pytest.fixture
def broken(compose: Doc) -> Doc:
    """A private copy to break (anchors make services share dicts, so copy before editing)."""
    return copy.deepcopy(compose)


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


# --- the real files ------------------------------------------------------------------------------


def test_vendored_schema_is_a_complete_compose_schema(schema: Doc) -> None:
    assert schema["$schema"]
    assert schema["title"] == "Compose Specification"
    assert schema["properties"]["services"]["patternProperties"]
    for definition in ("service", "healthcheck", "deployment", "network", "volume", "command"):
        assert definition in schema["$defs"], definition
    cls = validator_class(schema)
    assert cls is jsonschema.Draft202012Validator
    cls.check_schema(schema)


def test_compose_file_matches_the_compose_specification(compose: Doc, schema: Doc) -> None:
    assert schema_problems(compose, schema) == []


def test_built_services_run_registered_subcommands(
    compose: Doc, parser: argparse.ArgumentParser
) -> None:
    assert command_problems(compose, parser) == []
    assert build_context_problems(compose) == []
    assert {"migrate", "projector", "ingest", "api"} <= {
        name for name, service in _services(compose).items() if "build" in service
    }


def test_dockerfile_entrypoint_is_a_declared_console_script() -> None:
    assert entrypoint_problems(DOCKERFILE.read_text(encoding="utf-8"), console_scripts()) == []


def test_depends_on_targets_exist(compose: Doc) -> None:
    assert depends_on_problems(compose) == []


def test_long_running_services_have_healthchecks(compose: Doc) -> None:
    assert one_shot_services(compose) == {"migrate"}
    assert healthcheck_problems(compose) == []


def test_no_literal_secrets_in_environment(compose: Doc) -> None:
    assert secret_problems(compose) == []
    # The check did look at something: the DB password and URL are both present, interpolated.
    env = dict(_environment(_services(compose)["api"]))
    assert URL_PASSWORD.search(env["STUDBOOK_DATABASE_URL"])
    assert "POSTGRES_PASSWORD" in dict(_environment(_services(compose)["postgres"]))
    assert "STUDBOOK_AUTH_DISABLED" not in env


# --- broken copies are rejected by the same checks ----------------------------------------------


def test_validator_class_rejects_unknown_draft() -> None:
    with pytest.raises(LookupError):
        validator_class({"$schema": "https://example.invalid/draft-99/schema"})


@pytest.mark.parametrize(
    ("service", "key", "value"),
    [
        ("api", "not_a_compose_key", True),
        ("api", "ports", "8080:8080"),  # must be a list
        ("migrate", "depends_on", {"postgres": {"condition": "service_ready"}}),
        ("kafka", "healthcheck", {"test": ["CMD", "true"], "interval": 10}),  # must be a string
    ],
)
def test_schema_rejects_invalid_compose(
    broken: Doc, schema: Doc, service: str, key: str, value: object
) -> None:
    broken["services"][service][key] = value
    assert schema_problems(broken, schema)


def test_schema_rejects_unknown_top_level_key(broken: Doc, schema: Doc) -> None:
    broken["servics"] = {}
    assert schema_problems(broken, schema)


@pytest.mark.parametrize(
    ("service", "command", "expected"),
    [
        ("migrate", ["migrat"], "not a studbook-server subcommand"),
        ("api", ["serve", "--port", "8080"], "not a studbook-server subcommand"),
        ("api", ["api", "--prot", "8080"], "fails"),
        ("ingest", ["ingest", "--port", "eighty"], "fails"),
        ("projector", [], "has no command"),
    ],
)
def test_commands_must_be_registered_subcommands(
    broken: Doc,
    parser: argparse.ArgumentParser,
    service: str,
    command: list[str],
    expected: str,
) -> None:
    broken["services"][service]["command"] = command
    problems = command_problems(broken, parser)
    assert len(problems) == 1
    assert problems[0].startswith(f"{service}:")
    assert expected in problems[0]


def test_build_context_must_hold_a_dockerfile(broken: Doc) -> None:
    broken["services"]["api"]["build"] = {"context": ".", "dockerfile": "Nope.Dockerfile"}
    assert build_context_problems(broken) == ["api: build context '.' has no Nope.Dockerfile"]


@pytest.mark.parametrize(
    ("dockerfile", "expected"),
    [
        ('FROM python:3.11-slim\nENTRYPOINT ["studbook-srv"]\n', "not a [project.scripts] entry"),
        ("FROM python:3.11-slim\nENTRYPOINT studbook-server\n", "not exec"),
        ('FROM python:3.11-slim\nCMD ["studbook-server"]\n', "no ENTRYPOINT"),
        (
            'FROM x\nENTRYPOINT ["studbook-server"]\nENTRYPOINT ["python", "-m", "x"]\n',
            "not a [project.scripts] entry",
        ),
    ],
)
def test_entrypoint_must_be_a_declared_script(dockerfile: str, expected: str) -> None:
    problems = entrypoint_problems(dockerfile, console_scripts())
    assert len(problems) == 1
    assert expected in problems[0]


def test_entrypoint_check_reads_continuation_lines() -> None:
    dockerfile = 'FROM x\nENTRYPOINT [ \\\n  "studbook-server" ]\n'
    assert entrypoint_problems(dockerfile, console_scripts()) == []


def test_depends_on_unknown_service_is_rejected(broken: Doc) -> None:
    broken["services"]["api"]["depends_on"] = {
        **broken["services"]["api"]["depends_on"],
        "redis": {"condition": "service_started"},
    }
    assert depends_on_problems(broken) == ["api: depends_on unknown service 'redis'"]


def test_depends_on_healthy_needs_a_healthcheck(broken: Doc) -> None:
    del broken["services"]["kafka"]["healthcheck"]
    problems = depends_on_problems(broken)
    assert "projector: waits for 'kafka' to be healthy; it has no healthcheck" in problems


@pytest.mark.parametrize(
    "healthcheck", [None, {"disable": True}, {"test": ["NONE"]}], ids=["missing", "off", "NONE"]
)
def test_missing_healthcheck_is_rejected(broken: Doc, healthcheck: Doc | None) -> None:
    if healthcheck is None:
        del broken["services"]["api"]["healthcheck"]
    else:
        broken["services"]["api"]["healthcheck"] = healthcheck
    assert healthcheck_problems(broken) == ["api: long-running service has no healthcheck"]


def test_healthcheck_must_probe_the_served_port(broken: Doc) -> None:
    broken["services"]["ingest"]["command"] = ["ingest", "--host", "0.0.0.0", "--port", "9000"]
    assert healthcheck_problems(broken) == [
        "ingest: serves on port 9000; its healthcheck probes ['8081']"
    ]


def test_one_shot_must_not_restart(broken: Doc) -> None:
    broken["services"]["migrate"]["restart"] = "on-failure"
    assert healthcheck_problems(broken) == ["migrate: one-shot service must have restart: 'no'"]


@pytest.mark.parametrize(
    ("service", "key", "value"),
    [
        ("postgres", "POSTGRES_PASSWORD", "hunter2"),
        ("postgres", "POSTGRES_PASSWORD", "${STUDBOOK_DB_PASSWORD:-changeme}"),
        ("api", "STUDBOOK_DATABASE_URL", "postgresql://studbook:hunter2@postgres:5432/studbook"),
        ("api", "STUDBOOK_API_TOKEN", "abc123"),
    ],
)
def test_literal_secrets_are_rejected(broken: Doc, service: str, key: str, value: str) -> None:
    svc = broken["services"][service]
    svc["environment"] = {**svc["environment"], key: value}
    problems = secret_problems(broken)
    assert len(problems) == 1
    assert problems[0].startswith(f"{service}: {key} ")


def test_literal_secrets_are_rejected_in_list_form(broken: Doc) -> None:
    broken["services"]["ingest"]["environment"] = ["STUDBOOK_DB_PASSWORD=hunter2"]
    assert secret_problems(broken) == [
        "ingest: STUDBOOK_DB_PASSWORD holds a literal secret; use ${VAR:?message}"
    ]
