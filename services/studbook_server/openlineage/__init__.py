"""OpenLineage in: data pipelines (Airflow, Spark, dbt, Flink, ...) report to Studbook.

`POST /api/v1/lineage` (Marquez's path) takes RunEvent, DatasetEvent and JobEvent of the
OpenLineage 2-0-x spec, validates them against the vendored spec (`spec/`, `_spec.py`), maps each
to Studbook events (`_mapping.py`: pure) and hands those to the one write path, with the
authenticated principal. docs/openlineage.md has the mapping and how to point integrations here.
"""

from __future__ import annotations

from studbook_server.openlineage._http import PATH, routes
from studbook_server.openlineage._mapping import Mapped, MappingError, map_event
from studbook_server.openlineage._spec import SPEC_VERSION, violations

__all__ = ["PATH", "SPEC_VERSION", "Mapped", "MappingError", "map_event", "routes", "violations"]
