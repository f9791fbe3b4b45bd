#!/usr/bin/env bash
# Sets up the host and runs PearVisor's whole test suite:
#   tier 1  unit tests (no /dev/kvm needed)
#   tier 2  tiny hand-assembled guests on the host's /dev/kvm (kvm_pvm is enough)
#   tier 3  end-to-end boots of a stock Debian 6.12 kernel, directly on a host
#           with hardware virtualization, otherwise inside the nested-KVM
#           machine (QEMU/TCG with emulated AMD SVM)
# Usage: scripts/test.sh [extra cargo-nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
cargo build --workspace --bins
# The host GPU runtime (virglrenderer and Mesa from Debian sid; docs/gpu-runtime.md),
# assembled once and reused while sid's packages are unchanged.
target/debug/pearvisor gpu-runtime build --quiet
cargo nextest run --workspace --no-fail-fast "$@"
