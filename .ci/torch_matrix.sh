#!/usr/bin/env bash
# Torch matrix (issue 28 item 4): run the reversible engine's and the models' CPU tests against
#   - torch 2.4.1 (the floor pyproject.toml claims: torch>=2.4), and
#   - torch 2.11.0 (what the GPU machine has).
# Each version gets its own venv OUTSIDE the repo, so a fresh clone reuses it:
#   ${REVTRANSFER_CACHE:-$HOME/.cache/revtransfer}/venv-torch<X.Y>
# built from a wheelhouse next to it (wheels-torch<X.Y>/, filled by `pip download`, reused on rebuild).
# A venv is (re)built only when it is missing or its stamp (the exact requirement set) differs.
# The venvs hold the dependencies only, never revtransfer itself: the tests import the checkout they
# run from (`python -m pytest` in the repo root puts it first on sys.path; PYTHONPATH says so too).
#
# Usage: .ci/torch_matrix.sh [2.4] [2.11]      (no argument: both)
# Env:   REVTRANSFER_CACHE (cache root), PYTHON (interpreter for the venvs, default python3.11),
#        TORCH_MATRIX_TESTS (override the test files), PYTEST_ARGS (extra pytest arguments).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

CACHE=${REVTRANSFER_CACHE:-$HOME/.cache/revtransfer}
PYTHON=${PYTHON:-python3.11}
# The engine's tests (incl. its refusals, saved bytes, DDP on gloo) and the models' tests.
TESTS=${TORCH_MATRIX_TESTS:-"tests/test_reversible_engine.py tests/test_pareprop_streams.py
  tests/test_engine_refusals.py tests/test_saved_bytes.py tests/test_reversible_ddp.py
  tests/test_revvit.py tests/test_revswin.py tests/test_revmvit.py tests/test_revroberta.py
  tests/test_timm_api.py tests/test_model_weights.py"}

# torch pin, matching torchvision, and anything else that version needs pinned (space separated).
pins_for() {
  case "$1" in
    2.4)  echo "torch==2.4.1 torchvision==0.19.1" ;;
    2.11) echo "torch==2.11.0 torchvision==0.26.0" ;;
    *)    echo "torch_matrix: unknown torch version '$1' (known: 2.4 2.11)" >&2; return 1 ;;
  esac
}

# The requirement set: our runtime dependencies and the dev extra from pyproject.toml, with
# torch/torchvision replaced by the pins. One requirement per line.
requirements_for() {
  local pins
  pins=$(pins_for "$1") || return 1
  "$PYTHON" - "$pins" <<'EOF'
import re, sys, tomllib
pins = sys.argv[1].split()
pinned = {re.split(r"[<>=!~ \[;]", p, maxsplit=1)[0].lower() for p in pins}
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("dev", []))
keep = [r for r in reqs if re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower() not in pinned]
print("\n".join(pins + keep))
EOF
}

# pip, minus the "Location 'file:///...' is ignored" noise a machine-wide extra-index-url of local
# folders prints for every package it does not hold; pip's exit status is kept.
quiet_pip() { "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }

ensure_venv() {  # $1 = version; builds $CACHE/venv-torch$1 if missing or stale
  local v=$1 venv=$CACHE/venv-torch$1 wh=$CACHE/wheels-torch$1
  local stamp=$venv/.revtransfer-stamp req want t0 t1 t2
  want=$( { echo "python: $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"; requirements_for "$v"; } ) || return 1
  if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(sed '/^# installed:/,$d' "$stamp")" = "$want" ]; then
    echo "venv $venv is up to date"
    return 0
  fi
  if [ -x "$venv/bin/python" ]; then echo "updating $venv: its requirements changed (wheels in $wh)"
  else echo "building $venv (wheels in $wh)"; fi
  mkdir -p "$wh"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv" || return 1
  rm -f "$stamp"
  req=$venv/requirements.txt
  echo "$want" | sed 1d > "$req"
  t0=$(date +%s)
  # pip download reuses the wheels already in $wh; the resolve runs on the venv's own interpreter.
  quiet_pip "$venv/bin/python" -m pip download -q --disable-pip-version-check --no-cache-dir --only-binary=:all: \
    -d "$wh" -r "$req" || return 1
  t1=$(date +%s)
  quiet_pip "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-index --find-links "$wh" -r "$req" || return 1
  t2=$(date +%s)
  echo "download $((t1 - t0))s ($(du -sh "$wh" | cut -f1) in $wh), install $((t2 - t1))s ($(du -sh "$venv" | cut -f1))"
  { echo "$want"; echo "# installed: $(date -u +%FT%TZ), download $((t1 - t0))s, install $((t2 - t1))s"
    "$venv/bin/python" -m pip freeze --disable-pip-version-check; } > "$stamp"
}

run_version() {
  local v=$1 venv=$CACHE/venv-torch$1
  echo
  echo "================================================================================"
  echo "== torch matrix: torch $v   (venv: $venv)"
  echo "================================================================================"
  mkdir -p "$CACHE"
  # One builder at a time per version (two CI jobs on one machine share the cache).
  (
    flock 9 2>/dev/null || true
    ensure_venv "$v"
  ) 9>"$CACHE/.lock-torch$v" || { echo "== torch $v: FAILED to build the venv"; return 1; }
  PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$venv/bin/python" - <<'EOF'
import numpy, timm, torch, revtransfer
print(f"torch {torch.__version__}  timm {timm.__version__}  numpy {numpy.__version__}  revtransfer from {revtransfer.__file__}")
EOF
  local extra=()
  eval "extra=(${PYTEST_ARGS:-})"  # shell words, quotes honoured: PYTEST_ARGS="-k 'not slow'"
  # shellcheck disable=SC2086
  PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$venv/bin/python" -m pytest $TESTS -q -p no:cacheprovider "${extra[@]}"
  local rc=$?
  if [ $rc -eq 0 ]; then echo "== torch $v: PASSED"; else echo "== torch $v: FAILED (pytest exit $rc)"; fi
  return $rc
}

versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(2.4 2.11)
failed=()
for v in "${versions[@]}"; do
  pins_for "$v" >/dev/null || exit 2
  run_version "$v" || failed+=("$v")
done
echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "torch matrix: FAILED on torch ${failed[*]}"
  exit 1
fi
echo "torch matrix: all passed (torch ${versions[*]})"
