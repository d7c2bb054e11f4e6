#!/usr/bin/env bash
# Builds the Debian package: the release binary (with ISA-L when libisal-dev is installed), its
# man page and shell completions, then `cargo deb` (installed here when missing).
# Output: target/debian/mimic-eye_<version>-1_<arch>.deb
set -euo pipefail
cd "$(dirname "$0")/../.."
features=()
[ -f /usr/include/isa-l/igzip_lib.h ] && features=(--features isal)
cargo build --locked --release "${features[@]}"
assets=target/deb-assets
mkdir -p "$assets"
bin=target/release/mimic-eye
"$bin" man | gzip -9n > "$assets/mimic-eye.1.gz"
"$bin" completions bash > "$assets/mimic-eye.bash"
"$bin" completions zsh > "$assets/_mimic-eye"
"$bin" completions fish > "$assets/mimic-eye.fish"
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
cargo deb --no-build --strip
