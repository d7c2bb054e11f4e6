#!/usr/bin/env bash
# Side by side: mimic-eye's per-patient split against DuckDB doing the same job, same files,
# same cohort, same machine, alternating runs. Prints rows/s, MB/s, peak RSS and the ratio.
#
#   bash benches/duckdb.sh [--sizes "2 8"] [--runs 3] [--workdir DIR] [--gzip isal|zlib-rs] [-- COMPARE_ARGS...]
#
# `--gzip isal` (the default) builds mimic-eye with feature `isal` (ISA-L's inflate; needs
# libisal-dev); `--gzip zlib-rs` builds the default binary.
# Arguments after `--` go to compare.py, e.g. `-- --tables chartevents --orders shuffled --no-build`.
#
# Sizes are GB of uncompressed labevents (chartevents is about 0.8x); about 300,000 subjects of
# which 3,000 form the cohort. `--sizes "2 8"` needs about 60 GB of free disk and 45 minutes on a
# 2-core machine; the worlds are kept in the workdir and reused by later runs.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes="2 8"; runs=3; work=/tmp/mimic-eye-bench; gzip=isal
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) sizes=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --workdir) work=$2; shift 2 ;;
    --gzip) gzip=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$gzip" in
  isal)
    if [ ! -f /usr/include/isa-l/igzip_lib.h ]; then
      echo "--gzip isal needs ISA-L: apt-get install libisal-dev (or run with --gzip zlib-rs)" >&2
      exit 2
    fi
    cargo build --release --locked -q --features isal ;;
  zlib-rs) cargo build --release --locked -q ;;
  *) echo "--gzip is isal or zlib-rs, not $gzip" >&2; exit 2 ;;
esac
mkdir -p "$work"
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q duckdb
fi
exec "$work/venv/bin/python" benches/compare.py --bin target/release/mimic-eye --work "$work" --sizes $sizes --runs "$runs" "$@"
