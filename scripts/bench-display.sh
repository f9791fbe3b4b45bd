#!/usr/bin/env bash
# Frame latency of the web viewer into a real browser (headless Chromium):
#   1. on this host: the display store gets a frame (as from a virtio-gpu
#      flush) → WebSocket → the page's canvas, for a small rectangle and
#      whole frames (PNG and raw);
#   2. end to end: the page sends a key → the guest writes /dev/fb0 → the
#      canvas shows it, with the guest inside the nested machine when the
#      host has no hardware virtualization.
# Usage: scripts/bench-display.sh [--frames N] [--rounds N] [--skip-host] [--skip-guest]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
cargo build --release -p pearvisor -p pv-testkit --bins
exec ./target/release/pv-bench-display "$@"
