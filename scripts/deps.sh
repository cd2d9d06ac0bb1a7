# Sourced by test-all.sh and lab.sh: root check and the Debian packages weft's tests and lab use.

# require_root WHO WHY
require_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$1: run as root ($2)" >&2
    exit 1
  fi
}

# Install whatever is missing: etcd, nft, Debian's reference CNI plugins, iperf3, ping, iproute2,
# wireguard-tools, protoc + its includes to build the etcd client, containerd + runc + a static
# busybox (the image) for the test under a real runtime, shellcheck for deploy/install-cni.sh,
# and what the real kube-apiserver's start script uses (kubectl comes with the machine image).
install_missing() {
  local need=()
  command -v etcd >/dev/null || need+=(etcd-server)
  command -v protoc >/dev/null || need+=(protobuf-compiler)
  [ -e /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
  command -v nft >/dev/null || need+=(nftables)
  command -v wg >/dev/null || need+=(wireguard-tools)
  # The WireGuard lab test captures the underlay; the benchmark runs Debian's wireguard-go beside weft-wg.
  command -v tcpdump >/dev/null || need+=(tcpdump)
  command -v wireguard-go >/dev/null || need+=(wireguard-go)
  # The status page is tested in a real headless browser; the metrics in a real parser of the format.
  command -v chromium >/dev/null || need+=(chromium)
  /usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || need+=(python3-prometheus-client)
  command -v iperf3 >/dev/null || need+=(iperf3)
  command -v ping >/dev/null || need+=(iputils-ping)
  command -v ip >/dev/null || need+=(iproute2)
  [ -x /usr/lib/cni/portmap ] || need+=(containernetworking-plugins)
  # ../shared/k8s/start-apiserver.sh makes certificates and waits on /readyz with these.
  command -v openssl >/dev/null || need+=(openssl)
  command -v curl >/dev/null || need+=(curl)
  command -v unshare >/dev/null || need+=(util-linux)
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  # Debian's plain `busybox` is linked dynamically: the image needs the static one.
  dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' ||
    need+=(busybox-static)
  command -v shellcheck >/dev/null || need+=(shellcheck)
  # `vagrant validate` of the multi-VM lab's Vagrantfile (no VM is booted here).
  command -v vagrant >/dev/null || need+=(vagrant)
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}
