#!/usr/bin/env bash
# Run every weft test on a Debian 12 machine, as root: installs what is missing, builds, tests.
#   sudo ./scripts/test-all.sh            # everything
#   sudo ./scripts/test-all.sh -- NAME    # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
require_root test-all "the tests make network namespaces, links and nftables rules"
install_missing

cargo build --workspace --all-targets
extra=()
if [ "${1:-}" = "--" ]; then shift; extra=("$@"); fi
cargo test --workspace --no-fail-fast -- "${extra[@]}"
