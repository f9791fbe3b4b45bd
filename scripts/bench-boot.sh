#!/usr/bin/env bash
# Boot-time and memory benchmark, PearVisor vs QEMU microvm, on the same
# kernel and initramfs in the same (nested, when needed) machine.
# Usage: scripts/bench-boot.sh [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
cargo build --release --workspace --bins
exec ./target/release/pv-bench-boot "$@"
