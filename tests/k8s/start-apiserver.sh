#!/usr/bin/env bash
# A copy of ../shared/k8s/start-apiserver.sh, so the Kubernetes tests also run where only
# $KUBEBUILDER_ASSETS (setup-envtest) provides the binaries; the shared one is used when present.
# Start a throwaway etcd + kube-apiserver on loopback ports, or stop one.
#
#   start-apiserver.sh WORKDIR        start; prints WORKDIR/kubeconfig
#   start-apiserver.sh stop WORKDIR   stop exactly those processes; remove WORKDIR
#
# Binaries: kube-apiserver from $KUBE_APISERVER, else $KUBEBUILDER_ASSETS/kube-apiserver,
# else bin/kube-apiserver beside this script; etcd from $ETCD, else
# $KUBEBUILDER_ASSETS/etcd, else `etcd` on PATH.
# Optional: START_APISERVER_OWNER_PID=PID stops everything once that process is gone.
set -euo pipefail

readonly READY_TIMEOUT_S=60
readonly MARKER=.start-apiserver

die() { echo "start-apiserver: $*" >&2; exit 1; }

usage() { die "usage: $0 WORKDIR | $0 stop WORKDIR"; }

# A live process with an argument that is this work dir or a path inside it.
ours() {
  local pid=$1 dir=$2 arg
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && [[ -r /proc/$pid/cmdline ]] || return 1
  while IFS= read -r -d '' arg; do
    [[ $arg == "$dir" || $arg == "$dir"/* ]] && return 0
  done < <(cat "/proc/$pid/cmdline" 2>/dev/null)
  return 1
}

kill_pids() {
  local dir=$1; shift
  local pid alive i
  for pid in "$@"; do
    [[ $pid == "${BASHPID:-$$}" ]] && continue
    if ours "$pid" "$dir"; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for ((i = 0; i < 100; i++)); do
    alive=0
    for pid in "$@"; do
      [[ $pid == "${BASHPID:-$$}" ]] && continue
      ours "$pid" "$dir" && alive=1
    done
    ((alive)) || return 0
    sleep 0.1
  done
  for pid in "$@"; do
    [[ $pid == "${BASHPID:-$$}" ]] && continue
    if ours "$pid" "$dir"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
}

stop() {
  local dir=$1
  [[ -d $dir ]] || return 0
  dir=$(cd "$dir" && pwd -P)
  [[ -e $dir/$MARKER ]] || die "$dir was not made by this script; not touching it"
  local -a pids=()
  [[ -f $dir/pids ]] && mapfile -t pids <"$dir/pids"
  ((${#pids[@]})) && kill_pids "$dir" "${pids[@]}"
  rm -rf -- "$dir"
}

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
  else
    local p
    while :; do
      p=$((20000 + RANDOM % 12000))
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
  fi
}

find_bin() { # find_bin NAME ENVVAR FALLBACK
  local name=$1 var=$2 fallback=$3 path
  if [[ -n ${!var:-} ]]; then path=${!var}
  elif [[ -n ${KUBEBUILDER_ASSETS:-} && -x $KUBEBUILDER_ASSETS/$name ]]; then path=$KUBEBUILDER_ASSETS/$name
  else path=$fallback
  fi
  path=$(command -v -- "$path" 2>/dev/null) || die "$name not found (set $var)"
  [[ -x $path ]] || die "$name at $path is not executable"
  echo "$path"
}

make_certs() { # make_certs WORKDIR
  local d=$1
  (
    cd "$d/certs"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj /CN=test-ca \
      -keyout ca.key -out ca.crt
    openssl req -newkey rsa:2048 -nodes -sha256 -subj /CN=kube-apiserver \
      -keyout apiserver.key -out apiserver.csr
    printf '%s\n' 'subjectAltName=IP:127.0.0.1,DNS:localhost' \
      'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' >san.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
      -days 3650 -extfile san.ext -out apiserver.crt
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
    openssl rand -hex 32 >token
    printf '%s,admin,admin-uid,"system:masters"\n' "$(cat token)" >tokens.csv
    chmod 600 ./*.key token tokens.csv
  ) >"$d/logs/openssl.log" 2>&1 || die "openssl failed; see $d/logs/openssl.log"
}

write_kubeconfig() {
  local d=$1 port=$2
  cat >"$d/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $(base64 -w0 <"$d/certs/ca.crt")
users:
- name: admin
  user:
    token: $(cat "$d/certs/token")
contexts:
- name: local
  context: {cluster: local, user: admin}
current-context: local
EOF
  chmod 600 "$d/kubeconfig"
}

ready() { # ready WORKDIR PORT
  curl -fsS --max-time 2 --cacert "$1/certs/ca.crt" \
    -H "Authorization: Bearer $(cat "$1/certs/token")" \
    "https://127.0.0.1:$2/readyz" >/dev/null 2>&1
}

# Set while start() runs, for its EXIT trap.
WORKDIR='' API_PID='' ETCD_PID=''

cleanup_failed_start() {
  [[ -n $WORKDIR ]] || return 0
  kill_pids "$WORKDIR" ${API_PID:+"$API_PID"} ${ETCD_PID:+"$ETCD_PID"}
  if [[ -f $WORKDIR/pids ]]; then : >"$WORKDIR/pids"; fi
}

start() {
  local dir=$1 pid entry
  mkdir -p -- "$dir"
  dir=$(cd "$dir" && pwd -P)
  if [[ -f $dir/pids ]]; then
    while read -r pid; do
      ! ours "$pid" "$dir" || die "$dir already has a running server (pid $pid)"
    done <"$dir/pids"
  fi
  for entry in "$dir"/* "$dir"/.[!.]*; do
    [[ -e $entry && ${entry##*/} != "$MARKER" ]] && die "$dir is not empty (stop it first)"
  done
  : >"$dir/$MARKER"

  local script_dir apiserver etcd
  script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
  apiserver=$(find_bin kube-apiserver KUBE_APISERVER "$script_dir/bin/kube-apiserver")
  etcd=$(find_bin etcd ETCD etcd)
  command -v openssl >/dev/null || die "openssl not found"
  command -v curl >/dev/null || die "curl not found"

  mkdir -p "$dir/certs" "$dir/logs"
  make_certs "$dir"

  # Whatever goes wrong from here on, leave no process behind.
  WORKDIR=$dir
  trap cleanup_failed_start EXIT
  local deadline=$((SECONDS + READY_TIMEOUT_S)) client_port peer_port api_port _
  for _ in 1 2 3; do
    client_port=$(free_port) peer_port=$(free_port) api_port=$(free_port)
    [[ $client_port != "$peer_port" && $peer_port != "$api_port" && $client_port != "$api_port" ]] || continue
    rm -rf "$dir/etcd"
    "$etcd" --name default --data-dir "$dir/etcd" \
      --listen-client-urls "http://127.0.0.1:$client_port" \
      --advertise-client-urls "http://127.0.0.1:$client_port" \
      --listen-peer-urls "http://127.0.0.1:$peer_port" \
      --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
      --initial-cluster "default=http://127.0.0.1:$peer_port" \
      --logger zap --log-outputs stderr \
      </dev/null >"$dir/logs/etcd.log" 2>&1 &
    ETCD_PID=$!
    "$apiserver" \
      --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
      --etcd-servers "http://127.0.0.1:$client_port" \
      --tls-cert-file "$dir/certs/apiserver.crt" --tls-private-key-file "$dir/certs/apiserver.key" \
      --client-ca-file "$dir/certs/ca.crt" \
      --token-auth-file "$dir/certs/tokens.csv" \
      --authorization-mode RBAC \
      --service-account-issuer https://kubernetes.default.svc.cluster.local \
      --service-account-key-file "$dir/certs/sa.pub" \
      --service-account-signing-key-file "$dir/certs/sa.key" \
      --service-cluster-ip-range 10.96.0.0/16 \
      --endpoint-reconciler-type none \
      --disable-admission-plugins ServiceAccount \
      --allow-privileged=true \
      --profiling=false \
      </dev/null >"$dir/logs/kube-apiserver.log" 2>&1 &
    API_PID=$!
    printf '%s\n' "$API_PID" "$ETCD_PID" >"$dir/pids"

    while ((SECONDS < deadline)) && kill -0 "$ETCD_PID" 2>/dev/null && kill -0 "$API_PID" 2>/dev/null; do
      if ready "$dir" "$api_port"; then
        write_kubeconfig "$dir" "$api_port"
        if [[ -n ${START_APISERVER_OWNER_PID:-} ]]; then
          "$BASH" "$script_dir/${BASH_SOURCE[0]##*/}" __watch "$START_APISERVER_OWNER_PID" "$dir" \
            </dev/null >/dev/null 2>&1 &
          echo "$!" >>"$dir/pids"
        fi
        trap - EXIT
        echo "$dir/kubeconfig"
        return 0
      fi
      sleep 0.2
    done
    cleanup_failed_start
    ((SECONDS < deadline)) || break
    # One of them exited early (most likely a port was taken meanwhile): try new ports.
  done
  echo "start-apiserver: no ready server (3 tries, ${READY_TIMEOUT_S}s at most); logs in $dir/logs" >&2
  tail -n 5 "$dir/logs/etcd.log" >&2 || true
  tail -n 20 "$dir/logs/kube-apiserver.log" >&2 || true
  exit 1
}

watch() { # stop WORKDIR once process OWNER is gone
  local owner=$1 dir=$2
  trap '' HUP INT
  while kill -0 "$owner" 2>/dev/null && [[ -d $dir ]]; do sleep 1; done
  stop "$dir"
}

case ${1:-} in
  stop) [[ $# -eq 2 ]] || usage; stop "$2" ;;
  __watch) [[ $# -eq 3 ]] || usage; watch "$2" "$3" ;;
  "" | -h | --help) usage ;;
  *) [[ $# -eq 1 ]] || usage; start "$1" ;;
esac
