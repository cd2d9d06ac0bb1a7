#!/usr/bin/env bash
# Run every weft test on a Debian 12 machine, as root: installs what is missing, builds, tests.
#   sudo ./scripts/test-all.sh            # everything
#   sudo ./scripts/test-all.sh -- NAME    # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
require_root test-all "the tests make network namespaces, links and nftables rules"
install_missing

# A one-shot build: incremental state would only take disk (CI's may be small).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
df -h . | sed 's/^/disk before the build: /'
cargo build --workspace --all-targets
du -sh target 2>/dev/null | sed 's/^/target directory after the build: /'
extra=()
if [ "${1:-}" = "--" ]; then shift; extra=("$@"); fi
cargo test --workspace --no-fail-fast -- "${extra[@]}"
