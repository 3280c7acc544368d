"""Commands as mutations: each emits one event through the same path as the SDK.

The event is validated against its JSON Schema like any other, published (the event store in
embedded mode, Kafka otherwise) and answered with its id and a consistency token; send the token
back (header `X-Studbook-Consistency` or the request extension `consistencyToken`) to read your
write. Preconditions are checked against the read models first, so a mistake gets a clear error
now instead of a dead letter later.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import strawberry
from strawberry.scalars import JSON

from studbook_server.domain.contract import CURRENT_VERSIONS
from studbook_server.graphql import _typed as typed
from studbook_server.graphql._context import Info
from studbook_server.graphql._errors import BadInput, Forbidden, NotFound, ReadOnly, Unavailable
from studbook_server.graphql._ids import Ref, parse
from studbook_server.writepath import Accepted, Writer

PRODUCER = {"name": "studbook-graphql", "version": "1"}


@strawberry.type
class CommandResult:
    event_id: strawberry.ID
    consistency_token: str = strawberry.field(
        description="Send it as `X-Studbook-Consistency` to read this write once projected."
    )


@strawberry.input(description="A tag to set, or to remove when `value` is null.")
class TagInput:
    key: str
    value: str | None = None


def _timestamp(value: datetime | None) -> str:
    if value is not None and value.tzinfo is None:
        raise BadInput("`occurredAt` needs a timezone offset, e.g. 2026-03-01T00:00:00Z")
    return (value or datetime.now(UTC)).isoformat()


async def emit(
    info: Info,
    ref: Ref,
    subject: str,
    event_type: str,
    payload: dict[str, Any],
    occurred_at: datetime | None,
) -> CommandResult:
    ctx = info.context
    principal = await ctx.writer(ref.project, event_type)
    publisher = ctx.deps.publisher
    if publisher is None:
        raise ReadOnly(
            "this API is read-only (no event transport): send commands to a Studbook "
            "started with `studbook-server up`, or to an API with STUDBOOK_KAFKA_BOOTSTRAP set"
        )
    doc: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "type": event_type,
        "schema_version": CURRENT_VERSIONS[event_type],
        "occurred_at": _timestamp(occurred_at),
        "actor": principal.name,
        "project": ref.project,
        "subject": subject,
        "payload": payload,
        "producer": PRODUCER,
    }
    outcome = await Writer(ctx.deps.settings, ctx.pool, publisher).submit(principal, [doc])
    if isinstance(outcome, Accepted):
        return CommandResult(
            event_id=strawberry.ID(outcome.event_ids[0]),
            consistency_token=outcome.token.encode(),
        )
    if outcome.status == 422 and outcome.violations:
        detail = "; ".join(
            f"{v.path.removeprefix('/payload/') or '/'}: {v.message}" for v in outcome.violations
        )
        raise BadInput(f"`{event_type}` is not valid: {detail}")
    if outcome.status == 403:
        raise Forbidden(outcome.message)
    if outcome.status == 503:
        raise Unavailable(f"{outcome.message}; nothing was recorded")
    raise BadInput(outcome.message)


async def _model_version(info: Info, text: str, event_type: str) -> Ref:
    ref = parse(text, "model_version", what="modelVersion")
    await info.context.writer(ref.project, event_type)
    await info.context.consistent()
    model, _ = ref.split("@")
    if await info.context.loaders.model_version.load((ref.project, model, ref.number)) is None:
        raise NotFound(f"no model version `{ref.id}`: register it first")
    return ref


async def _current(info: Info, ref: Ref, kind: str, model: str, name: str) -> Any:
    return await info.context.loaders.assignment_by_name.load(
        (ref.project, kind, model, name, None, None)
    )


@strawberry.type
class Mutation:
    @typed.mutation(description="Point `alias` of the version's model at this version.")
    async def set_alias(
        self,
        info: Info,
        model_version: strawberry.ID,
        alias: str,
        occurred_at: datetime | None = None,
    ) -> CommandResult:
        ref = await _model_version(info, model_version, "model.alias.set")
        model, _ = ref.split("@")
        return await emit(
            info, ref, f"model:{model}", "model.alias.set",
            {"alias": alias, "version": ref.number}, occurred_at,
        )  # fmt: skip

    @typed.mutation(description="Remove `alias` from a model.")
    async def remove_alias(
        self, info: Info, model: strawberry.ID, alias: str, occurred_at: datetime | None = None
    ) -> CommandResult:
        ref = parse(model, "model", what="model")
        await info.context.writer(ref.project)
        await info.context.consistent()
        if occurred_at is None and await _current(info, ref, "alias", ref.key, alias) is None:
            raise NotFound(f"model `{ref.id}` has no alias `{alias}` now")
        return await emit(
            info, ref, f"model:{ref.key}", "model.alias.removed", {"alias": alias}, occurred_at
        )

    @typed.mutation(
        description="Approve a model version, with an optional comment and evidence (URIs, run ids)."
    )
    async def approve(
        self,
        info: Info,
        model_version: strawberry.ID,
        comment: str | None = None,
        evidence: list[str] | None = None,
        occurred_at: datetime | None = None,
    ) -> CommandResult:
        ref = await _model_version(info, model_version, "model.version.approved")
        payload: dict[str, Any] = {"version": ref.number}
        if comment is not None:
            payload["comment"] = comment
        if evidence:
            payload["evidence"] = evidence
        return await emit(
            info, ref, f"model:{ref.split('@')[0]}", "model.version.approved", payload, occurred_at
        )

    @typed.mutation(description="Reject a model version, saying why.")
    async def reject(
        self,
        info: Info,
        model_version: strawberry.ID,
        comment: str,
        evidence: list[str] | None = None,
        occurred_at: datetime | None = None,
    ) -> CommandResult:
        ref = await _model_version(info, model_version, "model.version.rejected")
        payload: dict[str, Any] = {"version": ref.number, "comment": comment}
        if evidence:
            payload["evidence"] = evidence
        return await emit(
            info, ref, f"model:{ref.split('@')[0]}", "model.version.rejected", payload, occurred_at
        )

    @typed.mutation(
        description="Deploy a model version to an environment (replacing what was there)."
    )
    async def deploy(
        self,
        info: Info,
        model_version: strawberry.ID,
        environment: str,
        target: str | None = None,
        occurred_at: datetime | None = None,
    ) -> CommandResult:
        ref = await _model_version(info, model_version, "model.version.deployed")
        payload: dict[str, Any] = {"version": ref.number, "environment": environment}
        if target is not None:
            payload["target"] = target
        return await emit(
            info, ref, f"model:{ref.split('@')[0]}", "model.version.deployed", payload, occurred_at
        )

    @typed.mutation(description="Take a model version out of an environment.")
    async def undeploy(
        self,
        info: Info,
        model_version: strawberry.ID,
        environment: str,
        occurred_at: datetime | None = None,
    ) -> CommandResult:
        ref = await _model_version(info, model_version, "model.version.undeployed")
        model, _ = ref.split("@")
        if occurred_at is None:
            held = await _current(info, ref, "deployment", model, environment)
            if held is None or held["version"] != ref.number:
                now = f"version {held['version']} is" if held is not None else "nothing is"
                raise BadInput(
                    f"`{ref.id}` is not deployed to `{environment}`: {now} deployed there"
                )
        return await emit(
            info, ref, f"model:{model}", "model.version.undeployed",
            {"version": ref.number, "environment": environment}, occurred_at,
        )  # fmt: skip

    @typed.mutation(description="Set tags on a run; a null value removes the tag.")
    async def tag_run(
        self,
        info: Info,
        run: strawberry.ID,
        tags: list[TagInput],
        occurred_at: datetime | None = None,
    ) -> CommandResult:
        ref = parse(run, "run", what="run")
        await info.context.writer(ref.project)
        await info.context.consistent()
        if not tags:
            raise BadInput("`tags` is empty: give at least one tag")
        if await info.context.loaders.run.load((ref.project, ref.key)) is None:
            raise NotFound(f"no run `{ref.id}`")
        return await emit(
            info,
            ref,
            ref.node,
            "run.tags.set",
            {"tags": {t.key: t.value for t in tags}},
            occurred_at,
        )

    @typed.mutation(description="Add a note to a project, dataset, run or model.")
    async def annotate(
        self,
        info: Info,
        subject: strawberry.ID,
        text: str,
        labels: JSON | None = None,
        occurred_at: datetime | None = None,
    ) -> CommandResult:
        ref = parse(subject, "project", "dataset", "run", "model", what="subject")
        payload: dict[str, Any] = {"text": text}
        if labels is not None:
            if not isinstance(labels, dict):
                raise BadInput("`labels` must be an object of names and string values")
            payload["labels"] = labels
        return await emit(info, ref, ref.node, "annotation.added", payload, occurred_at)
