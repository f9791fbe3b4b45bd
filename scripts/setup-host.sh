#!/usr/bin/env bash
# Installs what building and testing PearVisor needs on a Debian 12 host:
# build tools, busybox/kmod/xz for guest images, the Vulkan loader and Mesa's
# lavapipe (a CPU Vulkan device for pv-gpu's inventory test), Chromium and
# chromedriver (pv-display's web viewer test drives a headless browser), the
# X11 libraries the native window loads at run time with Xvfb, xwd (x11-apps)
# and xdotool (pv-display's window test: a virtual X server, screenshots of
# the window, synthesized keys and mouse), gcc and binutils (the bare-metal
# test guest of the hostile-guest test, built at test time), and QEMU 10
# (bookworm-backports) for the nested-KVM test machine. Idempotent; quiet when
# everything is present.
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
need=()
for p in xz-utils zstd kmod busybox-static cpio ca-certificates gcc binutils libvulkan1 mesa-vulkan-drivers chromium chromium-driver \
         libx11-6 libx11-xcb1 libxcursor1 libxi6 libxrandr2 libxkbcommon-x11-0 xvfb x11-apps xdotool; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup-host: installing ${need[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! qemu-system-x86_64 --version 2>/dev/null | grep -qE 'version (1[0-9])\.'; then
  echo "setup-host: installing QEMU 10 from bookworm-backports (nested-KVM test machine)"
  list=/etc/apt/sources.list.d/pearvisor-backports.list
  [ -f "$list" ] || echo 'deb http://deb.debian.org/debian bookworm-backports main' | $SUDO tee "$list" >/dev/null
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest >/dev/null
echo "setup-host: ready ($(qemu-system-x86_64 --version | head -1))"
