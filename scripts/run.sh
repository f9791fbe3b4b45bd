#!/usr/bin/env bash
# Sets up the host, builds PearVisor, the default guest image and the host
# GPU runtime, and boots the default guest with an accelerated virtio-gpu
# (Vulkan through Venus, OpenGL through virgl): its console on this terminal
# (Ctrl-A x quits; try `vulkaninfo --summary`, `eglinfo -B -p surfaceless`
# or `kmscube` there) and its screen in the browser at
# http://127.0.0.1:8080/ (keyboard and mouse go to the guest).
# On a host without hardware virtualization the guest runs inside the
# nested-KVM machine (QEMU/TCG with emulated AMD SVM), which is slower; the
# GPU runtime goes into it and the viewer's port is forwarded out of it.
# Arguments replace the defaults and go to `pearvisor run`, e.g.
#   scripts/run.sh --cpus 2 --memory 1G --gpu
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
cargo build --release --workspace --bins
./target/release/pearvisor image build
# virglrenderer 1.3 and Mesa from Debian sid, for hosts whose own are too
# old (pearvisor uses the host's when it is new enough); cached.
./target/release/pearvisor gpu-runtime build --quiet
gpu=context-types=venus:virgl
if ./target/release/pearvisor host >/dev/null; then
  [ $# -gt 0 ] || set -- --gpu "$gpu" --display web=127.0.0.1:8080
  exec ./target/release/pearvisor run "$@"
fi
echo "run: $(./target/release/pearvisor host || true)" >&2
echo "run: booting the guest inside the nested-KVM machine instead (slower)" >&2
[ $# -gt 0 ] || set -- --gpu "$gpu" --display web=0.0.0.0:8080
echo "run: the guest's screen will be at http://127.0.0.1:8080/" >&2
exec ./target/release/pv-nested --pearvisor ./target/release/pearvisor --forward 8080:8080 -- run "$@"
