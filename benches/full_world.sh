#!/usr/bin/env bash
# End to end at full size: a synthetic world whose labevents.csv.gz and chartevents.csv.gz have
# MIMIC-IV 3.1's row counts (158,374,764 and 432,997,491), built whole with `mimic-eye build` for the default cohort (eye-tracking, 3,000
# patients) and for `--cohort cxr`, against the floor: `mimic-eye decode` of the two big
# .csv.gz tables alone (the reading threads' inflate, the ceiling of any build of them), each
# timed, the floor being the two times added. Prints a table and the targets: default cohort
# end to end <= 1.25x the floor, peak RSS <= 128 MiB.
#
#   bash benches/full_world.sh [--scale F] [--subjects N] [--runs N] [--workdir DIR]
#                              [--chart-rows real|labevents] [--no-cxr]
#   e.g. bash benches/full_world.sh                 (full size: about 50 GB of disk, 10-20 minutes)
#        bash benches/full_world.sh --scale 0.005   (a smoke test: about 8 GB, 4 minutes)
#
# --scale F multiplies the row count. --subjects (default 65,379, MIMIC-CXR-JPG's patients) is
# the world's subjects, the 3,000 of the cohort included: synth gives every subject rows in both
# big tables and one chest X-ray, so `--cohort cxr` is every subject and writes every row out,
# while the real CXR patients have only part of MIMIC-IV's rows; the rows per subject follow
# from the row counts. `--chart-rows labevents` gives chartevents labevents' row count (the
# smaller world of earlier rounds). `--no-cxr` leaves out the `--cohort cxr` build, whose output
# is as big as the two tables' CSV (about 60 GB with chartevents' real count).
#
# Builds with `--features isal` when ISA-L is installed (libisal-dev), else the default build.
# The world is kept in the workdir and reused by a later run with the same parameters.
set -euo pipefail
cd "$(dirname "$0")/.."
scale=1; subjects=65379; runs=1; work=/tmp/mimic-eye-full; chart_rows=real; cxr=1
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale=$2; shift 2 ;;
    --subjects) subjects=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --workdir) work=$2; shift 2 ;;
    --chart-rows) chart_rows=$2; shift 2 ;;
    --no-cxr) cxr=0; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
lab_rows_real=158374764 chart_rows_real=432997491 patients=3000
if [ "$subjects" -le "$patients" ]; then echo "--subjects must be more than the cohort's $patients" >&2; exit 2; fi
# Rows per subject, then the subjects that give labevents its row count with them.
read -r rpp others < <(awk -v r="$lab_rows_real" -v f="$scale" -v s="$subjects" -v p="$patients" \
  'BEGIN { rpp = int(r * f / s + 0.5); if (rpp < 1) rpp = 1; o = int(r * f / rpp + 0.5) - p; if (o < 1) o = 1; print rpp, o }')
rows=$(( (patients + others) * rpp ))
if [ "$chart_rows" = real ]; then
  crpp=$(awk -v r="$chart_rows_real" -v f="$scale" -v s="$((patients + others))" 'BEGIN { c = int(r * f / s + 0.5); print c < 1 ? 1 : c }')
else
  crpp=$rpp
fi
chart_rows_n=$(( (patients + others) * crpp ))

if [ -f /usr/include/isa-l/igzip_lib.h ]; then
  cargo build --release --locked -q --features isal
else
  cargo build --release --locked -q
fi
bin=${CARGO_TARGET_DIR:-target}/release/mimic-eye
world=$work/world-$rpp-$others-$crpp
mkdir -p "$work"

# Up front: disk and time, from figures of synth's worlds measured on this machine: per row,
# labevents 118.5 bytes as CSV and 24.2 gzipped by synth, chartevents 92.4 and 13.1; synth about
# 0.6 us a row; ISA-L inflate about 1.3 GB/s of labevents, 1.8 GB/s of chartevents; disk writes
# about 0.4 GB/s. Fixed parts: the cohort's imaging (0.35 GB in the world, 0.24 MB per patient in
# an output, about 25 s of a build), 1 kB per other subject in the world, and 100 kB and 1.4 ms
# per patient in a `--cohort cxr` output (17 files in 5 folders each). Outputs are kept aside
# until the next invocation.
read -r need_world need_runs secs_world secs_runs < <(awk -v n="$rows" -v c="$chart_rows_n" -v s="$((patients + others))" \
  -v p="$patients" -v rpp="$rpp" -v crpp="$crpp" -v runs="$runs" -v cx="$cxr" 'BEGIN {
    world = n * 24.2 + c * 13.1 + 0.35e9 + s * 1e3
    eye = p * (rpp * 118.5 + crpp * 92.4) + p * 240e3
    cxr = cx * (n * 118.5 + c * 92.4 + s * 100e3)
    decode = n * 118.5 / 1.3e9 + c * 92.4 / 1.8e9
    printf "%.0f %.0f %.0f %.0f\n", world, runs * (2 * eye + cxr), (n + c) * 0.6e-6 + world / 0.4e9 + 60,
      runs * (2 * decode + 2 * 1.1 * decode + 25 + cx * (cxr / 0.4e9 + s * 1.4e-3))
  }')
if [ -f "$world/in/synth-planted.json" ]; then need_world=0 secs_world=0; fi
free=$(df -B1 --output=avail "$work" | tail -1)
gb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e9 }'; }
commas() { printf '%s' "$1" | rev | sed 's/[0-9]\{3\}/&,/g; s/,$//' | rev; }
echo "world: $(commas "$patients") cohort patients + $(commas "$others") others, $rpp labevents and $crpp chartevents rows each: $(commas "$rows") and $(commas "$chart_rows_n") rows"
echo "needs about $(gb $((need_world + need_runs))) GB of disk in $work ($(gb "$need_world") GB world, $(gb "$need_runs") GB outputs; $(gb "$free") GB free)"
echo "takes about $(( (secs_world + secs_runs) / 60 + 1 )) minutes ($((secs_world / 60)) to generate the world) on an idle 2-core machine, plus 6 if a previous invocation left outputs aside"
if [ $((need_world + need_runs)) -gt "$free" ]; then
  echo "not enough free disk in $work: free some, or use a smaller --scale or --runs" >&2
  exit 1
fi

# Outputs of earlier invocations: deleted now and waited out (compare.py's empty_trash says why).
py_compare() { python3 -c "import sys; sys.path.insert(0, 'benches'); import compare; compare.$1(*sys.argv[1:])" "${@:2}"; }
py_compare empty_trash "$work"
if [ ! -f "$world/in/synth-planted.json" ]; then
  rm -rf "$world"
  echo "generating the world in $world"
  start=$SECONDS
  "$bin" synth --output "$world/in" --patients "$patients" --others "$others" --rows-per-patient "$rpp" \
    --chart-rows-per-patient "$crpp" >/dev/null
  echo "generated in $((SECONDS - start)) s"
fi
lab=$world/in/mimiciv/hosp/labevents.csv.gz
chart=$world/in/mimiciv/icu/chartevents.csv.gz
# The whole input into the page cache (the two tables are most of it): no run pays for reading
# the disk, whichever runs first. Then nothing pending is written back during a timed run.
find "$world/in" -type f -exec cat {} + >/dev/null
sync

results=$world/results
rm -rf "$results"; mkdir -p "$results"
# SHA256SUMS.txt for the world's MIMIC-IV, made once (sha256sum) and kept beside the world: put
# in the dataset folder for the `-sha256` runs only, so that the build hashes every table it
# reads and compares it with its line (a PhysioNet download always carries one).
sums=$world/mimiciv-SHA256SUMS.txt
if [ ! -f "$sums" ]; then
  (cd "$world/in/mimiciv" && find . -type f ! -name SHA256SUMS.txt -printf '%P\n' | sort | xargs -d '\n' sha256sum) >"$sums.part"
  mv "$sums.part" "$sums"
fi
rm -f "$world/in/mimiciv/SHA256SUMS.txt"
# timed NAME CMD...: one run, its output folder (if any) set aside before and after, so no
# run pays for deleting another's files (compare.py's set_aside says why); `sync` first, so the
# build's syncfs does not write back what an earlier run left dirty. Appends "seconds rss_mib".
timed() {
  local name=$1 out=$world/out-$1; shift
  py_compare set_aside "$work" "$out"
  # The input back into the page cache: a `--cohort cxr` build writes tens of GB and evicts it,
  # and the first build of an output reads every linked image once (to hash it).
  find "$world/in" -type f -exec cat {} + >/dev/null
  sync
  local t0 t1
  t0=$(date +%s.%N)
  if ! /usr/bin/time -v -o "$results/time.txt" "$@" >"$results/$name.stdout" 2>"$results/$name.stderr"; then
    echo "failed: $*" >&2; tail -5 "$results/$name.stderr" >&2; exit 1
  fi
  t1=$(date +%s.%N)
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') $(awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$results/time.txt")" >>"$results/$name"
  echo "$name: $(tail -1 "$results/$name") (seconds, peak RSS MiB)"
  if [ -f "$out/summary.json" ] && [ ! -f "$results/$name.summary.json" ]; then cp "$out/summary.json" "$results/$name.summary.json"; fi
  py_compare set_aside "$work" "$out"
}
jobs=(decode-labevents decode-labevents-sha256 decode-chartevents build-eye-tracking build-eye-tracking-sha256)
if [ "$cxr" = 1 ]; then jobs+=(build-cxr); fi
for run in $(seq "$runs"); do
  # Alternating order: no job always runs first, or always right after another.
  order=("${jobs[@]}")
  if [ $((run % 2)) = 0 ]; then
    order=(); for ((i = ${#jobs[@]} - 1; i >= 0; i--)); do order+=("${jobs[$i]}"); done
  fi
  for job in "${order[@]}"; do
    case "$job" in
      decode-labevents) timed "$job" "$bin" decode --table "$lab" ;;
      decode-labevents-sha256) timed "$job" "$bin" decode --table "$lab" --sha256 ;;
      decode-chartevents) timed "$job" "$bin" decode --table "$chart" ;;
      build-eye-tracking-sha256)
        cp "$sums" "$world/in/mimiciv/SHA256SUMS.txt"
        timed "$job" "$bin" build --input "$world/in" --output "$world/out-$job" --cohort eye-tracking
        rm "$world/in/mimiciv/SHA256SUMS.txt"
        ;;
      build-*) timed "$job" "$bin" build --input "$world/in" --output "$world/out-$job" --cohort "${job#build-}" ;;
    esac
  done
done

median() { sort -g | awk '{ a[NR] = $1 } END { printf "%.2f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
max_rss() { awk '$2 > m { m = $2 } END { printf "%.1f", m }' "$1"; }
python3 - "$results" <<'PY'
import json, sys
results = sys.argv[1]
import os
for cohort in ("eye-tracking", "eye-tracking-sha256", "cxr"):
    if not os.path.exists(f"{results}/build-{cohort}.summary.json"):
        continue
    s = json.load(open(f"{results}/build-{cohort}.summary.json"))
    t = s["tables"]
    failed = f"; FAILED: {s['failed']}" if s["failed"] else ""
    print(f"build --cohort {cohort}: {s['patients']:,} patients; rows read labevents {t['hosp/labevents']['read']:,}, "
          f"chartevents {t['icu/chartevents']['read']:,}; written {t['hosp/labevents']['written']:,} and "
          f"{t['icu/chartevents']['written']:,}; MIMIC-IV SHA256SUMS.txt {s['datasets']['mimiciv']['sha256sums']}{failed}")
PY
echo "MIMIC-IV 3.1: labevents $(commas $lab_rows_real) rows, chartevents $(commas $chart_rows_real); this world: $(commas "$rows") and $(commas "$chart_rows_n")"
mb() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f", b / 1e6 }'; }
echo "inputs: labevents.csv.gz $(mb "$lab") MB, chartevents.csv.gz $(mb "$chart") MB; gzip backend $(sed -n 's/.*"gzip_backend": "\([^"]*\)".*/\1/p' "$results/decode-labevents.stdout")"
echo
echo "| what | median s | peak RSS MiB | runs |"
echo "|---|---:|---:|---:|"
for job in "${jobs[@]}"; do
  echo "| ${job/-/ } | $(cut -d' ' -f1 "$results/$job" | median) | $(max_rss "$results/$job") | $(wc -l <"$results/$job") |"
done
floor=$(awk -v a="$(cut -d' ' -f1 "$results/decode-labevents" | median)" -v b="$(cut -d' ' -f1 "$results/decode-chartevents" | median)" 'BEGIN { printf "%.2f", a + b }')
eye=$(cut -d' ' -f1 "$results/build-eye-tracking" | median)
echo "| floor: both decodes | $floor | | |"
echo
echo "- default cohort end to end <= 1.25x the floor: $eye s vs $floor s, $(awk -v e="$eye" -v f="$floor" 'BEGIN { printf "%.2fx: %s", e / f, e <= 1.25 * f ? "met" : "NOT met" }')"
ratio() { awk -v a="$(cut -d' ' -f1 "$results/$1" | median)" -v b="$(cut -d' ' -f1 "$results/$2" | median)" 'BEGIN { printf "%+.2f s (%+.1f %%)", b - a, 100 * (b - a) / a }'; }
echo "- SHA-256 while reading (on a thread of its own): decode labevents $(ratio decode-labevents decode-labevents-sha256), default cohort build $(ratio build-eye-tracking build-eye-tracking-sha256)"
rss_eye=$(max_rss "$results/build-eye-tracking")
echo "- default cohort peak RSS <= 128 MiB: $rss_eye MiB: $(awk -v a="$rss_eye" 'BEGIN { print a <= 128 ? "met" : "NOT met" }')"
if [ "$cxr" = 1 ]; then echo "- --cohort cxr peak RSS (no target; it grows with the patients): $(max_rss "$results/build-cxr") MiB"; fi
# The outputs stay aside; the next invocation deletes them and waits, as compare.py does.
