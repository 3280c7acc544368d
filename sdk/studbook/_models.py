"""Values the SDK returns: references to what was recorded."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DatasetVersion:
    """A recorded dataset version: ``dataset@version``, its content digest and where it lives.

    Returned by :func:`studbook.dataset_version`; pass it to :meth:`Run.use`,
    :meth:`Run.log_output` or as a parent of another version. ``version`` is the first 12 hex
    digits of ``digest``, so recording the same content again yields the same version.
    """

    dataset: str
    version: str
    digest: str
    uri: str
    size_bytes: int | None = None

    def __str__(self) -> str:
        return f"{self.dataset}@{self.version}"


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """A registered model version, as returned by :meth:`Run.register_model`.

    The registry numbers versions 1, 2, ... per model in the order their events are stored, so
    the number is not known to the client when it registers; ``event_id`` identifies the
    registration and ``run`` the run that trained it.
    """

    model: str
    artifact_uri: str
    run: str | None
    event_id: str
    digest: str | None = None
