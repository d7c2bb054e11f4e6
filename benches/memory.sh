#!/usr/bin/env bash
# Constant memory: builds synthetic worlds whose labevents is about 1 GB and about 4 GB
# uncompressed (chartevents about 0.8x that), three times each, and prints the peak RSS of every
# build and the median. Peak RSS must not grow with the size of a table.
#   bash benches/memory.sh [WORKDIR]      (needs about 25 GB free; takes several minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/mimic-eye-memory}
runs=${RUNS:-3}
cargo build --release --locked -q
bin=target/release/mimic-eye
mkdir -p "$work"
printf '%-8s %13s %12s %24s %11s %10s\n' size labevents_MB rows_read "peak_RSS_MiB(each run)" median_MiB seconds
for rpp in 300 1200; do
  dir="$work/rpp$rpp"
  if [ ! -f "$dir/in/synth-planted.json" ]; then
    rm -rf "$dir"
    "$bin" synth --output "$dir/in" --patients 3000 --others 27000 --rows-per-patient "$rpp" --plain >/dev/null
    sync
  fi
  rss=()
  for _ in $(seq "$runs"); do
    rm -rf "$dir/out"
    /usr/bin/time -v -o "$dir/time.txt" "$bin" build --input "$dir/in" --output "$dir/out" >/dev/null 2>"$dir/stderr.txt"
    rss+=("$(( $(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/time.txt") / 1024 ))")
  done
  median=$(printf '%s\n' "${rss[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  secs=$(python3 -c "import json;print(round(json.load(open('$dir/out/summary.json'))['duration_seconds'],1))")
  rows=$(python3 -c "import json;t=json.load(open('$dir/out/summary.json'))['tables'];print(t['hosp/labevents']['read']+t['icu/chartevents']['read'])")
  mb=$(( $(stat -c %s "$dir/in/mimiciv/hosp/labevents.csv") / 1000000 ))
  printf '%-8s %13s %12s %24s %11s %10s\n' "rpp$rpp" "$mb" "$rows" "$(IFS=,; echo "${rss[*]}")" "$median" "$secs"
done
