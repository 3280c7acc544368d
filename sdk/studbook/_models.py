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
    """A registered model version, as returned by :meth:`Run.register_model` and
    :func:`studbook.register_model`.

    The gateway numbers versions 1, 2, ... per model when it accepts their registration (a
    re-sent registration keeps its number); registering waits for that answer, so ``version``
    is the number, for :func:`studbook.set_alias` and the like. It is ``None`` when the number
    cannot be known at once: with a ``kafka://`` url (the server numbers the version when it
    stores the event), or when the gateway was unavailable and the registration went to the
    spool (it is numbered when the spool is re-sent). ``event_id`` identifies the registration
    and ``run`` the run that trained it.
    """

    model: str
    artifact_uri: str
    run: str | None
    event_id: str
    digest: str | None = None
    version: int | None = None
