#!/bin/sh
# Installs Mesa's software Vulkan driver (lavapipe) from Debian bookworm-backports, which the real
# LiteRT GPU accelerator (WebGPU over Dawn over Vulkan) needs on a machine without a GPU. Bookworm's
# own mesa-vulkan-drivers (22.3) is rejected by Dawn; backports' 25.x works. Idempotent: does
# nothing when a lavapipe of version 25 or later is installed. Needs root and apt; otherwise it
# prints what to do and exits 0, so that `make setup` still succeeds (the GPU tests then fail
# with the same instruction).
set -eu

installed=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
case "$installed" in
  2[5-9].*|[3-9][0-9].*) exit 0 ;;
esac

advice="install Mesa's lavapipe >= 25 as root: add 'bookworm-backports main' to apt's sources (same mirror as bookworm), then apt-get install -t bookworm-backports mesa-vulkan-drivers"
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || [ ! -f /etc/debian_version ]; then
  echo "gpu: the LiteRT GPU accelerator needs a Vulkan driver; $advice" >&2
  exit 0
fi

# The machine's own bookworm mirror, so that the backports entry works behind the same proxy.
mirror=$( { sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null
            sed -n 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]*\)\{0,1\}\([^[:space:]]*\)[[:space:]]\{1,\}bookworm[[:space:]].*/\2/p' \
              /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null; } \
          | tr ' ' '\n' | grep -v -e security -e '^$' | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}
list=/etc/apt/sources.list.d/bilayer-mobile-backports.list
if ! grep -q -h -s bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/*; then
  echo "deb $mirror bookworm-backports main" > "$list"
fi
echo "gpu: installing mesa-vulkan-drivers from bookworm-backports (lavapipe, for the LiteRT GPU accelerator)"
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers >/dev/null
