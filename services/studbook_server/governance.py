"""Who may record a governance decision: the `approve` scope, and four eyes where configured.

Approving or rejecting a model version needs the `approve` scope (a training job's `write` token
cannot approve what it trained). In the projects listed in `STUDBOOK_FOUR_EYES_PROJECTS` (`*`
for all), the token that registered a version may not decide on it. Both are checked when the
decision is sent (gateway and GraphQL), against the authenticated principal, never the claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from studbook_server.adapters.postgres import Pool
from studbook_server.auth import GOVERNANCE_TYPES, Principal
from studbook_server.config import Settings
from studbook_server.domain.contract import Violation

_REGISTERED_BY = """
SELECT registered_by_id FROM rm.model_versions WHERE project = $1 AND model = $2 AND number = $3
"""


def scope_problem(principal: Principal, docs: Sequence[dict[str, Any]]) -> Violation | None:
    """Why ``principal`` may not send these (valid) events, or None."""
    for index, doc in enumerate(docs):
        if not principal.may_send(doc["type"]):
            needed = "approve" if doc["type"] in GOVERNANCE_TYPES else "write"
            return Violation(
                index,
                "/type",
                f"token `{principal.name}` lacks the `{needed}` scope needed to send "
                f"`{doc['type']}` (event {index})",
            )
    return None


async def four_eyes_problem(
    pool: Pool, settings: Settings, principal: Principal, docs: Sequence[dict[str, Any]]
) -> Violation | None:
    """Why a decision among these events breaks the four-eyes rule, or None."""
    if principal.token_id is None:
        return None
    for index, doc in enumerate(docs):
        if doc["type"] not in GOVERNANCE_TYPES:
            continue
        project = doc["project"]
        if project not in settings.four_eyes_projects and "*" not in settings.four_eyes_projects:
            continue
        model = doc["subject"].partition(":")[2]
        version = doc["payload"]["version"]
        registered_by = await pool.fetchval(_REGISTERED_BY, project, model, version)
        if registered_by == principal.token_id:
            return Violation(
                index,
                "/payload/version",
                f"four eyes: token `{principal.name}` registered `{model}` version {version} "
                f"and may not decide on it in project `{project}` (event {index}); ask another "
                "reviewer",
            )
    return None
