#!/usr/bin/env bash
# Installs the Feast peer reference venv at .stack/feast-venv from scripts/requirements-feast.txt.
#
#   bash scripts/setup-feast.sh          # create or update (no-op when the requirements are unchanged)
#   bash scripts/setup-feast.sh --force  # recreate from scratch
#
# PYTHON overrides the interpreter (default python3.11, else python3; it must be 3.11). A stamp file with
# the requirements' sha256 makes a second run a no-op. Prints the install time; exits non-zero with a
# one-line reason (and pip's last lines on stderr) when the install fails. Needs only PyPI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.stack/feast-venv"
REQ="$ROOT/scripts/requirements-feast.txt"
STAMP="$VENV/.requirements.sha256"
LOG="$ROOT/.stack/logs/setup-feast.log"

force=0
[[ "${1:-}" == "--force" ]] && force=1

if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif command -v python3.11 >/dev/null 2>&1; then
  py=python3.11
else
  py=python3
fi
ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
if [[ "$ver" != "3.11" ]]; then
  echo "setup-feast: need Python 3.11, $py is ${ver:-missing}" >&2
  exit 2
fi

want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ $force -eq 0 && -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "setup-feast: $VENV is up to date"
  exit 0
fi

mkdir -p "$(dirname "$LOG")"
start=$(date +%s.%N)
if [[ $force -eq 1 || ! -x "$VENV/bin/python" ]]; then
  "$py" -m venv --clear "$VENV"
fi
rm -f "$STAMP"
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -r "$REQ" >"$LOG" 2>&1; then
  tail -n 15 "$LOG" >&2
  echo "setup-feast: pip install -r scripts/requirements-feast.txt failed (full log: $LOG)" >&2
  exit 1
fi
if ! "$VENV/bin/python" -c 'import feast, pandas, pyarrow, dask' >>"$LOG" 2>&1; then
  tail -n 15 "$LOG" >&2
  echo "setup-feast: feast installed but does not import (full log: $LOG)" >&2
  exit 1
fi
echo "$want" >"$STAMP"
end=$(date +%s.%N)
fv="$("$VENV/bin/python" -c 'import feast; print(feast.__version__)')"
printf 'setup-feast: feast %s installed in %s in %.1fs\n' "$fv" "${VENV#"$ROOT"/}" "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')"
