#!/usr/bin/env bash
# The single-host lab: installs what is missing, builds weft (release), runs `weft-lab ARGS…`.
#   sudo ./scripts/lab.sh up [--nodes N] [--pods M] [--ipv6] [--store etcd]
#   sudo ./scripts/lab.sh down
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "lab: run as root (the lab makes network namespaces)" >&2
  exit 1
fi
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v nft >/dev/null || need+=(nftables)
command -v ping >/dev/null || need+=(iputils-ping)
command -v etcd >/dev/null || need+=(etcd-server)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo build --release --quiet
exec target/release/weft-lab "$@"
