#!/usr/bin/env bash
# Sets up the host, builds PearVisor and the default guest image, and boots
# the default guest with its console on this terminal (Ctrl-A x quits).
# On a host without hardware virtualization the guest runs inside the
# nested-KVM machine (QEMU/TCG with emulated AMD SVM), which is slower.
# Extra arguments go to `pearvisor run`, e.g. scripts/run.sh --cpus 2 --memory 1G
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
cargo build --release --workspace --bins
./target/release/pearvisor image build
if ./target/release/pearvisor host >/dev/null; then
  exec ./target/release/pearvisor run "$@"
fi
echo "run: $(./target/release/pearvisor host || true)" >&2
echo "run: booting the guest inside the nested-KVM machine instead (slower)" >&2
exec ./target/release/pv-nested --pearvisor ./target/release/pearvisor -- run "$@"
