# Sourced by scripts/run and scripts/test: makes sure .venv exists and matches pyproject.toml.
# Usage: studbook_venv <extras>   (e.g. "server,kafka,dev")
studbook_venv() {
    local root extras py stamp want
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    extras="$1"
    py=""
    for cand in python3.13 python3.12 python3.11 python3; do
        if command -v "$cand" >/dev/null 2>&1 &&
            "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            py="$cand"
            break
        fi
    done
    if [ -z "$py" ]; then
        echo "error: Studbook needs Python >= 3.11 on PATH (tried python3.13, python3.12, python3.11, python3)" >&2
        return 1
    fi
    if [ ! -x "$root/.venv/bin/python" ]; then
        echo "==> creating virtualenv $root/.venv with $py" >&2
        "$py" -m venv "$root/.venv" || return 1
    fi
    stamp="$root/.venv/.studbook-installed-${extras//,/-}"
    want="$(sha256sum <"$root/pyproject.toml" | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "==> installing Studbook[$extras] into .venv" >&2
        "$root/.venv/bin/python" -m pip install -q --upgrade pip >&2 || return 1
        "$root/.venv/bin/python" -m pip install -q -e "$root[$extras]" >&2 || return 1
        echo "$want" >"$stamp"
    fi
    export PATH="$root/.venv/bin:$PATH"
}
