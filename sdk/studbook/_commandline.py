"""The command line of a run: recorded with secrets masked, and rewritten for a re-run.

Recording (:func:`masked`): an argument is replaced by :data:`MASK` when it is the value of an
option whose name says it is secret (``--api-token X``, ``--password=X``, ``db.password=X``),
when it looks like a credential by its shape (``sbk_...``, ``ghp_...``, ``AKIA...``, a JWT), and
a password inside a url (``https://user:X@host``) is masked in place. Names are split into words
at ``-``, ``_`` and ``.``: ``--api-key`` and ``--auth_token`` are secret, ``--max-tokens`` and
``--key-column`` are not.

Re-running (:func:`with_params`): ``--set lr=0.01`` replaces the value of ``--lr``,
``--lr=...`` or ``lr=...`` (Hydra-style) on the recorded command line, and appends
``--lr=0.01`` when the parameter is not on it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence

MASK = "***"

# Words that make an option secret, and pairs of words that do together.
_SECRET_WORDS = frozenset(
    {
        "password", "passwd", "pwd", "passphrase", "secret", "token", "apikey", "credential",
        "credentials", "privatekey", "accesskey", "secretkey",
    }
)  # fmt: skip
_SECRET_PAIRS = frozenset(
    {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"), ("client", "secret")}
)
# Credentials recognisable by their shape, wherever they appear.
_CREDENTIAL = re.compile(
    r"^((sbk_|ghp_|gho_|ghs_|ghu_|github_pat_|glpat-|xox[abprs]-|sk-|sk_live_|hf_|npm_|pypi-)"
    r"[A-Za-z0-9_-]{16,}|(AKIA|ASIA)[0-9A-Z]{16}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.)"
)
_OPTION = re.compile(r"^(-{1,2})([A-Za-z][A-Za-z0-9_.-]*)(=(.*))?$", re.DOTALL)
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*):[^@/\s]*@")
_ASSIGNMENT = re.compile(r"^(\+{0,2})([A-Za-z_][A-Za-z0-9_.-]*)=(.*)$", re.DOTALL)


def secret_name(name: str) -> bool:
    """Whether an option or key name says its value is secret."""
    words = [w for w in re.split(r"[-_.]+", name.lower()) if w]
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(words))


def _mask_url(value: str) -> str:
    """Mask the password of every url with credentials in ``value`` (also ``--db=postgres://...``)."""
    return _URL_PASSWORD.sub(rf"\1:{MASK}@", value)


def masked(argv: Sequence[str]) -> list[str]:
    """``argv`` with the values that look like secrets replaced by :data:`MASK`."""
    out: list[str] = []
    value_is_secret = False
    for arg in argv:
        if value_is_secret:
            value_is_secret = False
            if not arg.startswith("-"):
                out.append(MASK)
                continue
        option = _OPTION.match(arg)
        assignment = None if option else _ASSIGNMENT.match(arg)
        if option and secret_name(option[2]):
            if option[3] is None:
                value_is_secret = True  # the value is the next argument
                out.append(arg)
            else:
                out.append(f"{option[1]}{option[2]}={MASK}")
        elif assignment and secret_name(assignment[2]):
            out.append(f"{assignment[1]}{assignment[2]}={MASK}")
        elif _CREDENTIAL.match(arg.rpartition("=")[2]):
            out.append(MASK if "=" not in arg else f"{arg.rpartition('=')[0]}={MASK}")
        else:
            out.append(_mask_url(arg))
    return out


def masked_positions(argv: Sequence[str]) -> list[int]:
    """Indexes of the arguments that were masked when recorded."""
    return [i for i, arg in enumerate(argv) if arg == MASK or arg.endswith("=" + MASK)
            or f":{MASK}@" in arg]  # fmt: skip


def _spellings(key: str) -> set[str]:
    return {key, key.replace("_", "-"), key.replace("-", "_")}


def with_params(argv: Sequence[str], changes: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """``argv`` with each parameter in ``changes`` set to its new value; and notes saying what
    was replaced or appended (one per parameter)."""
    out = list(argv)
    notes: list[str] = []
    for key, value in changes.items():
        names = _spellings(key)
        done = False
        for i, arg in enumerate(out):
            option = _OPTION.match(arg)
            if option and option[2] in names:
                if option[3] is not None:
                    out[i] = f"{option[1]}{option[2]}={value}"
                elif i + 1 < len(out):
                    out[i + 1] = value
                else:
                    out.append(value)
                notes.append(f"--set {key}: replaced the value of `{option[1]}{option[2]}`")
                done = True
                break
            assignment = None if option else _ASSIGNMENT.match(arg)
            if assignment and assignment[2] in names:
                out[i] = f"{assignment[1]}{assignment[2]}={value}"
                notes.append(f"--set {key}: replaced `{assignment[1]}{assignment[2]}=...`")
                done = True
                break
        if not done:
            out.append(f"--{key}={value}")
            notes.append(f"--set {key}: not on the recorded command line; appended `--{key}=...`")
    return out, notes
