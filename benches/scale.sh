#!/usr/bin/env bash
# The per-patient split for the 3,000-patient cohort and for a 65,000-patient one (MIMIC-CXR's
# patient count), against the file system's floor for publishing that many files and against
# DuckDB; see benches/scale_split.py.
#
#   bash benches/scale.sh [--workdir DIR] [SCALE_SPLIT_ARGS...]
#   e.g. bash benches/scale.sh --sizes 8 --runs 3      (the defaults)
#        bash benches/scale.sh --sizes 0.2 --runs 1 --big-cohort 20000 --duckdb-timeout 120
#
# Builds mimic-eye with feature `isal` when ISA-L is installed (libisal-dev), else the default
# build; the split reads `.csv`, so the inflate does not matter here. Uses compare.py's worlds in
# the workdir (the default is duckdb.sh's), generating them when missing. At the defaults (8 GB,
# 3 runs, 65,000) it needs about 19 GB for the outputs, kept aside until the next invocation,
# plus 16 GB for the world if missing (it prints its estimate and refuses when the disk is
# short), and about 15 minutes plus DuckDB's 65,000-partition run (capped at 30 minutes), plus
# 6 minutes on a later invocation (compare.py's empty_trash) and about 10 to generate a missing
# world.
set -euo pipefail
cd "$(dirname "$0")/.."
work=/tmp/mimic-eye-bench
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --workdir) work=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -f /usr/include/isa-l/igzip_lib.h ]; then
  cargo build --release --locked -q --features isal
else
  cargo build --release --locked -q
fi
if ! command -v strace >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q strace >/dev/null || true
  else sudo -n apt-get install -y -q strace >/dev/null 2>&1 || true
  fi
fi
mkdir -p "$work"
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q duckdb
fi
exec "$work/venv/bin/python" benches/scale_split.py --bin "${CARGO_TARGET_DIR:-target}/release/mimic-eye" --work "$work" "${args[@]}"
