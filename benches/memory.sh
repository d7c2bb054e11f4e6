#!/usr/bin/env bash
# Constant memory: builds synthetic worlds whose labevents is about 1 GB and about 4 GB
# uncompressed (chartevents about 0.8x that) and prints peak RSS of each build.
#   bash benches/memory.sh [WORKDIR]      (needs about 25 GB free; takes several minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/mimic-eye-memory}
cargo build --release --locked -q
bin=target/release/mimic-eye
mkdir -p "$work"
printf '%-8s %14s %14s %12s %10s %14s\n' size labevents_MB rows_read peak_RSS_MiB seconds rows_per_s
for rpp in 300 1200; do
  dir="$work/rpp$rpp"
  if [ ! -f "$dir/in/synth-planted.json" ]; then
    rm -rf "$dir"
    "$bin" synth --output "$dir/in" --patients 3000 --others 27000 --rows-per-patient "$rpp" --plain >/dev/null
  fi
  rm -rf "$dir/out"
  /usr/bin/time -v -o "$dir/time.txt" "$bin" build --input "$dir/in" --output "$dir/out" >/dev/null 2>"$dir/stderr.txt"
  rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/time.txt")
  secs=$(python3 -c "import json;print(round(json.load(open('$dir/out/summary.json'))['duration_seconds'],1))")
  rows=$(python3 -c "import json;t=json.load(open('$dir/out/summary.json'))['tables'];print(t['hosp/labevents']['read']+t['icu/chartevents']['read'])")
  mb=$(( $(stat -c %s "$dir/in/mimiciv/hosp/labevents.csv") / 1000000 ))
  printf '%-8s %14s %14s %12s %10s %14s\n' "rpp$rpp" "$mb" "$rows" "$((rss_kb / 1024))" "$secs" "$(python3 -c "print(int($rows/$secs))")"
done
