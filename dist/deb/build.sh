#!/usr/bin/env bash
# Builds the Debian package: release binaries, man pages and completions generated from the
# clap definitions (dist/deb/generated, not committed), then cargo-deb (`cargo install --locked cargo-deb`
# first). The metadata is in crates/daemon/Cargo.toml. The binaries are built with line
# tables (profile.release debug = 1, for backtraces); --dbgsym strips them in the .deb and
# moves the symbols to hv-vss-dbgsym_*.ddeb beside it (objcopy, from binutils). Prints the
# path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release --locked -p hv-vssd -p hv-vss
gen=dist/deb/generated
rm -rf "$gen"
target/release/hv-vss generate-docs "$gen"
target/release/hv-vssd --generate-man "$gen/man"
mkdir -p target/debian
cargo deb --no-build --locked --dbgsym -p hv-vssd --output target/debian/ | grep -v '\.ddeb$' | tail -n 1
