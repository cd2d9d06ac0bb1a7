#!/bin/sh
# Install weft's CNI plugin and network configuration on a node.
#   install-cni.sh [WEFT_CNI_BINARY] [CNI_BIN_DIR] [CNI_CONF_DIR]
# Defaults: target/release/weft-cni beside this script's repository, /opt/cni/bin, /etc/cni/net.d.
# The DaemonSet's init container runs this with the host's /opt/cni/bin and /etc/cni/net.d mounted.
#
# The plugin binary goes in as `weft` (the conflist's "type"). Then every plugin the conflist names
# (weft, portmap) is asked from CNI_BIN_DIR which spec versions it speaks (CNI_COMMAND=VERSION), and
# the conflist is written with the newest version all of them support that is no newer than what
# the runtime accepts, so that neither the runtime nor a chained plugin refuses the network (Debian
# 12's containerd 1.6 and reference plugins stop at 1.0.0; weft itself speaks up to 1.1.0). The
# conflist is written to a temporary file beside it and renamed, so a runtime never reads half of it.
#
# Environment:
#   WEFT_CNI_VERSION_MAX  newest CNI spec version the runtime accepts (default 1.0.0; 1.1.0 for a
#                         runtime built on libcni 1.2 or newer)
#   WEFT_CONFLIST         the conflist template (default: 10-weft.conflist beside this script)
#   WEFT_DAEMON_SOCKET    weftd's CNI socket, written as "daemonSocket" (default /run/weft/cni.sock)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=${1:-$here/../target/release/weft-cni}
bin_dir=${2:-/opt/cni/bin}
conf_dir=${3:-/etc/cni/net.d}
template=${WEFT_CONFLIST:-$here/10-weft.conflist}
ceiling=${WEFT_CNI_VERSION_MAX:-1.0.0}
socket=${WEFT_DAEMON_SOCKET:-/run/weft/cni.sock}
conflist=$conf_dir/10-weft.conflist

die() {
  echo "install-cni.sh: $*" >&2
  exit 1
}

# One line of text from the lines of $1.
one_line() {
  printf '%s' "$1" | tr '\n' ' '
}

# The spec versions plugin $1 answers to VERSION, one a line.
supported_versions() {
  out=$(printf '{"cniVersion":"1.0.0"}' | CNI_COMMAND=VERSION "$1" 2>&1) ||
    die "$1: VERSION failed: $(one_line "$out")"
  list=$(printf '%s' "$out" | tr -d '\n' |
    sed -n 's/.*"supportedVersions"[[:space:]]*:[[:space:]]*\[\([^]]*\)\].*/\1/p')
  [ -n "$list" ] || die "$1: no supportedVersions in its VERSION reply: $(one_line "$out")"
  printf '%s\n' "$list" | tr ',' '\n' | tr -d '" \t'
}

# The version lines of stdin that are no newer than $1 (X.Y.Z, compared numerically).
at_most() {
  awk -v max="$1" 'BEGIN { split(max, m, ".") }
    { split($0, v, ".")
      for (i = 1; i <= 3; i++) if (v[i] + 0 != m[i] + 0) { if (v[i] + 0 < m[i] + 0) print; next }
      print }'
}

printf '%s\n' "$ceiling" | grep -Eq '^[0-9]+\.[0-9]+\.[0-9]+$' ||
  die "WEFT_CNI_VERSION_MAX=$ceiling is not a version like 1.0.0"
case $socket in
  /*[\"\|\&]* | /*\\*) die "WEFT_DAEMON_SOCKET=$socket: a path without \", |, & or \\, please" ;;
  /*) ;;
  *) die "WEFT_DAEMON_SOCKET=$socket is not an absolute path" ;;
esac
[ -f "$template" ] || die "$template: no such conflist template"
plugins=$(sed -n 's/.*"type"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$template")
[ -n "$plugins" ] || die "$template names no plugin (no \"type\")"

mkdir -p "$bin_dir" "$conf_dir"
cp "$src" "$bin_dir/.weft.tmp"
chmod 0755 "$bin_dir/.weft.tmp"
mv -f "$bin_dir/.weft.tmp" "$bin_dir/weft"

# The versions every plugin supports, up to the ceiling; the newest of them.
common=""
report=""
first=yes
for plugin in $plugins; do
  [ -x "$bin_dir/$plugin" ] || die "plugin $plugin: not found in $bin_dir (the conflist chains it)"
  versions=$(supported_versions "$bin_dir/$plugin")
  report="$report${report:+; }$plugin: $(one_line "$versions" | sed 's/ $//')"
  if [ "$first" = yes ]; then
    common=$versions
    first=no
  else
    common=$(printf '%s\n' "$common" | grep -Fx "$versions" || true)
  fi
done
version=$(printf '%s\n' "$common" | grep . | at_most "$ceiling" | sort -t. -k1,1n -k2,2n -k3,3n | tail -n 1)
[ -n "$version" ] ||
  die "no CNI version is supported by every plugin and <= $ceiling (WEFT_CNI_VERSION_MAX); $report"

tmp=$conf_dir/.10-weft.conflist.tmp.$$
trap 'rm -f "$tmp"' EXIT
sed -e "s|\"cniVersion\"[[:space:]]*:[[:space:]]*\"[^\"]*\"|\"cniVersion\": \"$version\"|" \
  -e "s|\"daemonSocket\"[[:space:]]*:[[:space:]]*\"[^\"]*\"|\"daemonSocket\": \"$socket\"|" \
  "$template" >"$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$conflist"
trap - EXIT
echo "installed $bin_dir/weft and $conflist (cniVersion $version; $report)"
