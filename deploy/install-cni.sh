#!/bin/sh
# Install weft's CNI plugin and network configuration on a node.
#   install-cni.sh [WEFT_CNI_BINARY] [CNI_BIN_DIR] [CNI_CONF_DIR]
# The plugin binary goes in as `weft` (the conflist's "type"); the conflist is written atomically so a
# runtime never reads half of it. The DaemonSet's init container runs this with the host's
# /opt/cni/bin and /etc/cni/net.d mounted.
set -eu
src=${1:-$(dirname "$0")/../target/release/weft-cni}
bin_dir=${2:-/opt/cni/bin}
conf_dir=${3:-/etc/cni/net.d}
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$bin_dir" "$conf_dir"
install -m 0755 "$src" "$bin_dir/.weft.tmp"
mv -f "$bin_dir/.weft.tmp" "$bin_dir/weft"
install -m 0644 "$here/10-weft.conflist" "$conf_dir/.10-weft.conflist.tmp"
mv -f "$conf_dir/.10-weft.conflist.tmp" "$conf_dir/10-weft.conflist"
echo "installed $bin_dir/weft and $conf_dir/10-weft.conflist"
