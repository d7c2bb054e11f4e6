#!/usr/bin/env bash
# The daemon beside a PhysioNet-sized tree: a synthetic world (3,000-patient cohort) plus
# 65,000 chest X-ray patients in no eye-tracking dataset (about a million files in 360,000
# folders, index.html pages included), in the wget mirror layout. Prints, for the daemon:
# the first build's time against a one-shot `build` of the same tree, its inotify watches,
# then RSS and CPU over IDLE seconds of idling, how long a rebuild that finds nothing changed
# takes (target: 1 s), and how long a change to a cohort table takes to be applied (target:
# settle_seconds + 2 s).
#   bash benches/daemon_idle.sh [WORKDIR]   IDLE=600 BULK=65000 PATIENTS=3000 COHORT=eye-tracking
# COHORT=cxr builds every chest X-ray patient of the tree (68,000 with the defaults) instead of
# the eye-tracking cohort.
# Needs about 5 GB of disk (a million small files) and IDLE + 3 minutes (COHORT=cxr: 8 GB more
# for the output and IDLE + 10 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/mimic-eye-daemon-idle}
idle=${IDLE:-600}
bulk=${BULK:-65000}
patients=${PATIENTS:-3000}
port=${PORT:-19899}
cohort=${COHORT:-eye-tracking}
cargo build --release --locked -q
bin=$PWD/target/release/mimic-eye
mkdir -p "$work"
if [ ! -f "$work/in/synth-planted.json" ]; then
  rm -rf "$work/in"
  "$bin" synth --output "$work/in" --layout physionet --patients "$patients" --others "$patients" \
    --rows-per-patient 20 --cxr-bulk-patients "$bulk" >/dev/null
  sync
fi
input="$work/in/physionet.org/files"
# The change below appends to admissions as a new download would, with its SHA256SUMS.txt
# line: this brings a tree that an earlier run changed back in line with its sums.
resum() {
  python3 - "$1" <<'PY'
import hashlib, os, sys
path = sys.argv[1]
folder = os.path.dirname(os.path.dirname(path))  # <version>/hosp/x -> <version>
sums = os.path.join(folder, "SHA256SUMS.txt")
rel = os.path.relpath(path, folder)
digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
lines = [l if not l.endswith(" " + rel) else f"{digest} {rel}" for l in open(sums).read().splitlines()]
open(sums, "w").write("\n".join(lines) + "\n")
PY
}
resum "$(ls "$input"/mimiciv/*/hosp/admissions.csv*)"
files=$(find "$work/in" -type f | wc -l)
folders=$(find "$work/in" -type d | wc -l)
echo "input: $files files in $folders folders"

# The one-shot build twice, timing the second: both it and the daemon then read from a warm
# page cache, as the daemon's first build does after this one.
for _ in 1 2; do
  rm -rf "$work/once"
  start=$(date +%s.%N)
  "$bin" build --input "$input" --output "$work/once" --cohort "$cohort" >/dev/null
  once=$(echo "$(date +%s.%N) - $start" | bc)
done
once_rss=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['peak_rss_bytes'] >> 20)" "$work/once/summary.json")

rm -rf "$work/out"
cat > "$work/daemon.toml" <<TOML
input = "$input"
output = "$work/out"
cohort = "$cohort"
metrics_addr = "127.0.0.1:$port"
settle_seconds = 5
rescan_seconds = 300
TOML
metric() { curl -s "127.0.0.1:$port/metrics" | awk -v m="$1" '$1 ~ "^"m {s+=$NF} END {print s+0}'; }
start=$(date +%s.%N)
MIMIC_EYE_LOG=info "$bin" run --config "$work/daemon.toml" >"$work/daemon.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until [ "$(metric 'mimic_eye_builds_total{kind="full",result="success"}')" != 0 ] 2>/dev/null; do sleep 0.2; done
first=$(echo "$(date +%s.%N) - $start" | bc)
sleep 10
watches=0
for fd in /proc/$pid/fd/*; do
  if [ "$(readlink "$fd")" = anon_inode:inotify ]; then
    watches=$((watches + $(grep -c '^inotify wd:' "/proc/$pid/fdinfo/$(basename "$fd")")))
  fi
done
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks); rss_max=0
for _ in $(seq "$idle"); do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  [ "$rss" -gt "$rss_max" ] && rss_max=$rss
  sleep 1
done
t1=$(ticks)
cpu=$(echo "scale=3; 100 * ($t1 - $t0) / $hz / $idle" | bc)

# A rebuild that finds nothing to do: a file no table is made of appears in a watched folder
# (the dataset's version folder), so the daemon builds and every job finds itself unchanged.
# Its time is the daemon's own, from its log.
builds_before=$(metric 'mimic_eye_builds_total')
noop_file=$(ls -d "$input"/mimic-cxr-jpg/*/ | head -1)NOTES-$(date +%s%N).txt
echo "not a table" >"$noop_file"
until [ "$(metric 'mimic_eye_builds_total')" != "$builds_before" ]; do sleep 0.1; done
until [ "$(metric 'mimic_eye_build_running')" = 0 ]; do sleep 0.1; done
noop=$(grep 'build finished' "$work/daemon.log" | tail -1 | sed -n 's/.*seconds=\([0-9.]*\).*/\1/p')
rm -f "$noop_file"

# A change to a cohort table: one more admissions row for a cohort patient.
adm=$(ls "$input"/mimiciv/*/hosp/admissions.csv*)
sid=$(python3 -c "import json;print(json.load(open('$work/in/synth-planted.json'))['cohort'][0])")
hadm=$(( 20000000 + $(date +%s) % 9999999 ))  # new on every run
python3 - "$adm" "$sid" "$hadm" <<'PY'
import gzip, sys
path, sid, hadm = sys.argv[1], sys.argv[2], sys.argv[3]
row = f"{sid},{hadm}" + "," * 14 + "\n"
if path.endswith(".gz"):
    with open(path, "ab") as f:
        f.write(gzip.compress(row.encode()))
else:
    open(path, "a").write(row)
PY
resum "$adm"
start=$(date +%s.%N)
until grep -q "^[0-9]*,$sid,$hadm," "$work/out/patient_$sid/Hosp/admissions.csv" 2>/dev/null; do sleep 0.1; done
applied=$(echo "$(date +%s.%N) - $start" | bc)
kill "$pid"; wait "$pid" || true

printf '%-40s %s\n' "cohort" "$cohort" "one-shot build (s)" "$once" "one-shot peak RSS (MiB)" "$once_rss" "daemon first build (s)" "$first" \
  "first build / one-shot" "$(echo "scale=2; $first / $once" | bc)" \
  "inotify watches" "$watches" "idle seconds" "$idle" "idle CPU (% of one core)" "$cpu" \
  "peak RSS while idle (MiB)" "$((rss_max / 1024))" "no-change rebuild (s)" "$noop" \
  "change applied after (s; settle 5)" "$applied"
