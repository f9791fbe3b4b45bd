#!/usr/bin/env bash
# GPU acceleration overhead: pv-vkcheck's Vulkan and GL workloads run on the
# host's drivers (lavapipe/llvmpipe from the GPU runtime) directly and in a
# guest through Venus and virgl, in the same (nested, when needed) machine.
# Usage: scripts/bench-gpu.sh [pv-bench-gpu arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
cargo build --release --workspace --bins
target/release/pearvisor gpu-runtime build --quiet
exec ./target/release/pv-bench-gpu "$@"
