#!/usr/bin/env bash
# Installs the Debian 12 packages passtcore needs to build, test and benchmark.
# Idempotent: packages already present are skipped quickly by apt.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(
  # build
  python3 python3-venv python3-dev gcc g++ make git
  # guests and peers used by tests, the demo and benchmarks
  iproute2 iputils-ping busybox-static udhcpc isc-dhcp-client curl iperf3 ethtool
  qemu-system-x86 tshark passt slirp4netns procps psmisc kmod
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "passtcore: installing Debian packages: ${missing[*]}"
  # tshark asks whether non-root users may capture; answer 'no' without a prompt.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# vhost-user under TCG needs QEMU >= 9 (Debian 12's 7.2 crashes when the guest driver
# starts the device): QEMU 10 from bookworm-backports (docs/deploy-kubevirt.md).
ensure_backports() {
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" \
      "Suites: bookworm-backports" "Components: main" \
      "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" \
      > /etc/apt/sources.list.d/passtcore-backports.sources
  fi
  apt-get update -qq
}
if ! qemu-system-x86_64 --version 2>/dev/null | grep -Eq 'version (9|[1-9][0-9])\.'; then
  echo "passtcore: installing QEMU 10 from bookworm-backports"
  ensure_backports
  apt-get install -y -qq -t bookworm-backports qemu-system-x86 >/dev/null
fi
# libvirt 11 (bookworm-backports) for the end-to-end test of the sidecar's vhost-user
# domain: libvirt >= 11.1 starts passt for <interface type="vhostuser">.
if ! libvirtd --version 2>/dev/null | grep -Eq ' (1[1-9]|[2-9][0-9])\.'; then
  echo "passtcore: installing libvirt 11 from bookworm-backports"
  ensure_backports
  apt-get install -y -qq --no-install-recommends -t bookworm-backports \
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients >/dev/null
fi
echo "passtcore: system packages ready ($(qemu-system-x86_64 --version | head -1);" \
  "libvirt $(libvirtd --version 2>/dev/null | awk '{print $NF}'))"
