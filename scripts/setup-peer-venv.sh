#!/usr/bin/env bash
# Installs a benchmark peer's venv: .stack/<name>-venv from scripts/requirements-<name>.txt (feast: the
# training-set benchmark; evidently: the monitoring benchmark).
#
#   bash scripts/setup-peer-venv.sh NAME          # create or update (no-op when the requirements are unchanged)
#   bash scripts/setup-peer-venv.sh NAME --force  # recreate from scratch
#
# PYTHON overrides the interpreter (default python3.11, else python3; it must be 3.11). A stamp file with
# the requirements' sha256 makes a second run a no-op. Prints the install time; exits non-zero with a
# one-line reason (and pip's last lines on stderr) when the install fails. Needs only PyPI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="${1:-}"
case "$NAME" in
  feast) IMPORTS="feast, pandas, pyarrow, dask" ;;
  evidently) IMPORTS="evidently, pandas" ;;
  *) echo "setup-peer-venv: name must be feast or evidently, got '${NAME}'" >&2; exit 2 ;;
esac
VENV="$ROOT/.stack/$NAME-venv"
REQ="$ROOT/scripts/requirements-$NAME.txt"
STAMP="$VENV/.requirements.sha256"
LOG="$ROOT/.stack/logs/setup-$NAME.log"

force=0
[[ "${2:-}" == "--force" ]] && force=1

if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif command -v python3.11 >/dev/null 2>&1; then
  py=python3.11
else
  py=python3
fi
ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
if [[ "$ver" != "3.11" ]]; then
  echo "setup-$NAME: need Python 3.11, $py is ${ver:-missing}" >&2
  exit 2
fi

want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ $force -eq 0 && -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "setup-$NAME: $VENV is up to date"
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
  echo "setup-$NAME: pip install -r scripts/requirements-$NAME.txt failed (full log: $LOG)" >&2
  exit 1
fi
if ! "$VENV/bin/python" -c "import $IMPORTS" >>"$LOG" 2>&1; then
  tail -n 15 "$LOG" >&2
  echo "setup-$NAME: $NAME installed but does not import (full log: $LOG)" >&2
  exit 1
fi
echo "$want" >"$STAMP"
end=$(date +%s.%N)
fv="$("$VENV/bin/python" -c "import $NAME; print($NAME.__version__)")"
printf 'setup-%s: %s %s installed in %s in %.1fs\n' "$NAME" "$NAME" "$fv" "${VENV#"$ROOT"/}" "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')"
