"""Query cost: refuse a request whose worst-case work is too large, before it is validated.

Cost is counted on the document as it would execute: every field costs 1, and the fields below
a list are counted once per item it may return, i.e. multiplied by its `first` argument, or by
the default page size for a paginated field (a type with `nodes`), or by :data:`LIST_GUESS`
for a plain list. Fragment spreads count their fragment every time they are spread (each
fragment's cost is computed once, so even a fan-out of fragments spreading each other is
counted in time linear in the document). So `first: 500` under `first: 500` costs 250,000, and
ten fragments each spreading the next ten times cost 10^10: both are refused with a message that
says the cost and the limit, before graphql-core's validation (whose overlapping-fields check is
what such a fan-out makes explode) or any resolver runs. String arguments (literals and
variables) are bounded too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from graphql.language import Visitor, visit
from strawberry.extensions import SchemaExtension

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    StringValueNode,
    VariableNode,
    get_named_type,
)
from studbook_server.graphql._types import DEFAULT_PAGE

MAX_COST = 250_000
LIST_GUESS = 10
MAX_STRING = 10_000


class _Strings(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.longest = 0

    def enter_string_value(self, node: StringValueNode, *_: Any) -> None:
        self.longest = max(self.longest, len(node.value))


def _longest_string(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return max((_longest_string(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max((_longest_string(v) for v in value), default=0)
    return 0


class _Cost:
    def __init__(
        self, schema: GraphQLSchema, fragments: Mapping[str, FragmentDefinitionNode],
        variables: Mapping[str, Any],
    ) -> None:  # fmt: skip
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.memo: dict[str, int] = {}
        self.active: set[str] = set()

    def _first(self, field: FieldNode) -> int | None:
        for arg in field.arguments or ():
            if arg.name.value != "first":
                continue
            if isinstance(arg.value, IntValueNode):
                return int(arg.value.value)
            if isinstance(arg.value, VariableNode):
                value = self.variables.get(arg.value.name.value)
                return value if isinstance(value, int) else None
        return None

    def _multiplier(self, field: FieldNode, return_type: Any, parent: Any) -> int:
        if field.name.value in ("nodes", "edges") and "nodes" in parent.fields:
            return 1  # the items of a page: its `first` was counted on the connection field
        first = self._first(field)
        if first is not None:
            return max(first, 1)
        named = get_named_type(return_type)
        if isinstance(named, GraphQLObjectType) and "nodes" in named.fields:
            return DEFAULT_PAGE
        unwrapped = return_type.of_type if isinstance(return_type, GraphQLNonNull) else return_type
        return LIST_GUESS if isinstance(unwrapped, GraphQLList) else 1

    def selection_set(self, node: SelectionSetNode | None, parent: Any) -> int:
        if node is None:
            return 0
        total = 0
        for selection in node.selections:
            if isinstance(selection, FieldNode):
                field = (
                    parent.fields.get(selection.name.value)
                    if isinstance(parent, GraphQLObjectType)
                    else None
                )
                if field is None:  # __typename, introspection: cheap, and validated later
                    total += 1
                    continue
                below = self.selection_set(selection.selection_set, get_named_type(field.type))
                total += 1 + self._multiplier(selection, field.type, parent) * below
            elif isinstance(selection, FragmentSpreadNode):
                total += self.fragment(selection.name.value)
            elif isinstance(selection, InlineFragmentNode):
                on = selection.type_condition
                inner = self.schema.get_type(on.name.value) if on is not None else parent
                total += self.selection_set(selection.selection_set, inner)
            if total > MAX_COST:
                return total  # already too much: no need to count the rest
        return total

    def fragment(self, name: str) -> int:
        if name in self.memo:
            return self.memo[name]
        definition = self.fragments.get(name)
        if definition is None or name in self.active:
            return 0  # unknown or cyclic: validation reports it
        self.active.add(name)
        on = self.schema.get_type(definition.type_condition.name.value)
        self.memo[name] = self.selection_set(definition.selection_set, on)
        self.active.discard(name)
        return self.memo[name]


def query_cost(
    schema: GraphQLSchema, document: Any, variables: Mapping[str, Any] | None = None
) -> int:
    """The worst-case cost of the document's most expensive operation."""
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    counter = _Cost(schema, fragments, variables or {})
    roots = {
        "query": schema.query_type,
        "mutation": schema.mutation_type,
        "subscription": schema.subscription_type,
    }
    costs = [
        counter.selection_set(d.selection_set, roots[d.operation.value])
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode)
    ]
    return max(costs, default=0)


class QueryCostLimiter(SchemaExtension):
    """Refuses documents over :data:`MAX_COST` or with strings over :data:`MAX_STRING`."""

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        if document is not None and context.pre_execution_errors is None:
            strings = _Strings()
            visit(document, strings)
            longest = max(strings.longest, _longest_string(context.variables or {}))
            if longest > MAX_STRING:
                context.pre_execution_errors = [
                    GraphQLError(
                        f"a string argument of {longest} characters is longer than the "
                        f"{MAX_STRING} allowed"
                    )
                ]
            else:
                cost = query_cost(context.schema._schema, document, context.variables)
                if cost > MAX_COST:
                    context.pre_execution_errors = [
                        GraphQLError(
                            f"query too expensive: its worst case costs {cost} (fields, times "
                            f"the page sizes above them), more than the {MAX_COST} allowed; ask "
                            "for smaller pages (`first`) or fewer nested lists"
                        )
                    ]
        yield
