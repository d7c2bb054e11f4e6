#!/usr/bin/env bash
# `mimic-eye verify` against `sha256sum -c` on the same listing, side by side, warm page cache:
# 160 files of 10 MB (1.6 GB) of random bytes and their SHA256SUMS.txt in a temporary folder.
# Prints both times and the ratio. Usage: bash benches/verify.sh [files] [MB per file]
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-160}; mb=${2:-10}
cargo build --locked --release --quiet
bin=$PWD/target/release/mimic-eye
dir=$(mktemp -d /tmp/mimic-eye-verify.XXXXXX)
trap 'rm -rf "$dir"' EXIT
for i in $(seq -w 1 "$files"); do
  head -c "$((mb * 1000000))" /dev/urandom > "$dir/file$i.bin"
done
(cd "$dir" && sha256sum file*.bin > SHA256SUMS.txt)
cat "$dir"/* > /dev/null   # warm the page cache
time_of() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
for run in 1 2 3; do
  s=$(cd "$dir" && time_of sha256sum -c --quiet SHA256SUMS.txt)
  m=$(time_of "$bin" verify --output "$dir")
  printf 'run %s: %s files, %s MB: sha256sum -c %.2f s, mimic-eye verify %.2f s, %.2fx\n' \
    "$run" "$files" "$((files * mb))" "$s" "$m" "$(echo "$s / $m" | bc -l)"
done
