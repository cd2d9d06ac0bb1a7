#!/usr/bin/env bash
# The single-host lab: installs what is missing, builds weft (release), runs `weft-lab ARGS…`.
#   sudo ./scripts/lab.sh up [--nodes N] [--pods M] [--ipv6] [--store etcd]
#   sudo ./scripts/lab.sh down NAME     (the lab name `up` printed; `down --all` removes every lab,
#                                        `down` alone lists them)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
require_root lab "the lab makes network namespaces"
install_missing
cargo build --release --quiet
exec target/release/weft-lab "$@"
