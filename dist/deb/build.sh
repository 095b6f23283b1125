#!/usr/bin/env bash
# Builds the Debian package: release binaries, man pages and completions generated from the
# clap definitions (dist/deb/generated, not committed), then cargo-deb (`cargo install --locked cargo-deb`
# first). The metadata is in crates/daemon/Cargo.toml. Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release --locked -p hv-vssd -p hv-vss
gen=dist/deb/generated
rm -rf "$gen"
target/release/hv-vss generate-docs "$gen"
target/release/hv-vssd --generate-man "$gen/man"
mkdir -p target/debian
cargo deb --no-build --locked -p hv-vssd --output target/debian/ | tail -n 1
