"""The public surface: `studbook.__all__` is honest, documented, and importing is side-effect free."""

from __future__ import annotations
import __future__

import inspect
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import studbook
from studbook import _errors


def test_all_names_exist_and_nothing_public_is_left_out() -> None:
    public = {
        name
        for name, value in vars(studbook).items()
        if not name.startswith("_") and value is not __future__.annotations
    }
    assert public == set(studbook.__all__) - {"__version__"}
    assert studbook.__all__ == sorted(studbook.__all__)
    for name in studbook.__all__:
        assert hasattr(studbook, name), name


def test_every_public_name_is_documented() -> None:
    package_doc = studbook.__doc__ or ""
    for name in studbook.__all__:
        if name == "__version__":
            continue
        obj = getattr(studbook, name)
        assert (inspect.getdoc(obj) or "").strip(), f"{name} has no docstring"
        assert name in package_doc, f"{name} is not mentioned in the package docstring"
        assert obj.__module__ == "studbook", name


def test_public_methods_of_public_classes_are_documented() -> None:
    for cls in (studbook.Run, studbook.DatasetVersion, studbook.ModelVersion):
        for name, member in vars(cls).items():
            if name.startswith("_") or (not callable(member) and not isinstance(member, property)):
                continue
            assert (inspect.getdoc(member) or "").strip(), f"{cls.__name__}.{name}"


def test_exception_tree() -> None:
    for exc in (studbook.ConfigError, studbook.EventRejected, studbook.TransportError):
        assert issubclass(exc, studbook.StudbookError)
        assert exc.__name__ in (_errors.__doc__ or "")
    assert issubclass(studbook.StudbookError, Exception)
    rejected = studbook.EventRejected(
        "bad", status=422, errors=[{"index": 0, "path": "/payload", "message": "m"}]
    )
    assert rejected.errors[0]["path"] == "/payload"
    assert rejected.status == 422
    copy = pickle.loads(pickle.dumps(rejected))
    assert (str(copy), copy.status, copy.errors) == (str(rejected), 422, rejected.errors)


def test_version() -> None:
    assert studbook.__version__ == "0.1.0"


def _fresh_python(code: str, home: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDBOOK_")}
    env["HOME"] = str(home)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return dict(json.loads(done.stdout))


def test_import_does_not_import_kafka_and_does_no_io(tmp_path: Path) -> None:
    code = """
import json, sys, threading
import studbook
print(json.dumps({
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("aiokafka", "urllib3", "asyncio")),
    "threads": threading.active_count(),
}))
"""
    out = _fresh_python(code, tmp_path)
    assert out["modules"] == []  # urllib3 too is imported only when the first batch is sent
    assert out["threads"] == 1  # no background thread before init
    assert list(tmp_path.iterdir()) == []  # nothing written under HOME (no cache, no spool)


def test_kafka_url_does_not_import_aiokafka_in_the_callers_thread(tmp_path: Path) -> None:
    code = """
import json, sys
import studbook
studbook.init(url="kafka://127.0.0.1:1", project="churn")
print(json.dumps({"before_send": "aiokafka" in sys.modules}))
import os; os._exit(0)
"""
    out = _fresh_python(code, tmp_path)
    assert out == {"before_send": False}
