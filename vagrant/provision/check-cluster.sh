#!/usr/bin/env bash
# On the control plane: one pod per node (a DaemonSet of busybox), then every pod pings every
# other pod's IPv4 and IPv6 address and fetches a page from the outside; weftd doctor runs on
# every node. Prints a matrix like the single-host lab's (4: IPv4 answered, 6: IPv6 answered,
# 46: both, -: neither) and exits 1 if anything failed.
set -euo pipefail
export KUBECONFIG=/etc/kubernetes/admin.conf
ns=weft-check

kubectl wait --for=condition=Ready nodes --all --timeout=15m
kubectl -n weft-system rollout status daemonset/weftd --timeout=10m
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$ns" apply -f - <<'YAML'
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: probe
spec:
  selector:
    matchLabels: {app: probe}
  template:
    metadata:
      labels: {app: probe}
    spec:
      tolerations: [{operator: Exists}]
      terminationGracePeriodSeconds: 1
      containers:
        - name: probe
          image: docker.io/library/busybox:1.36
          command: ["sleep", "infinity"]
YAML
kubectl -n "$ns" rollout status daemonset/probe --timeout=10m

# name node ipv4 ipv6, one line per probe pod
mapfile -t pods < <(kubectl -n "$ns" get pods -l app=probe -o \
  jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIPs[0].ip} {.status.podIPs[1].ip}{"\n"}{end}')

answers() { # pod address -> 0 if one ping answers
  kubectl -n "$ns" exec "$1" -- ping -c 1 -W 2 "$2" >/dev/null 2>&1
}

failed=0
printf '%-24s' 'from \ to'
for target in "${pods[@]}"; do read -r _ node _ _ <<<"$target"; printf ' %-14s' "$node"; done
printf ' %s\n' outside
for source in "${pods[@]}"; do
  read -r pod node _ _ <<<"$source"
  printf '%-24s' "$node"
  for target in "${pods[@]}"; do
    read -r other _ v4 v6 <<<"$target"
    if [ "$other" = "$pod" ]; then printf ' %-14s' '·'; continue; fi
    cell=""
    if answers "$pod" "$v4"; then cell+=4; else failed=1; fi
    if [ -n "$v6" ]; then
      if answers "$pod" "$v6"; then cell+=6; else failed=1; fi
    fi
    printf ' %-14s' "${cell:--}"
  done
  if kubectl -n "$ns" exec "$pod" -- wget -q -T 5 -O /dev/null http://deb.debian.org/ 2>/dev/null; then
    printf ' %s\n' ok
  else
    printf ' %s\n' '-'; failed=1
  fi
done

for weftd in $(kubectl -n weft-system get pods -l app.kubernetes.io/name=weftd -o name); do
  node=$(kubectl -n weft-system get "$weftd" -o jsonpath='{.spec.nodeName}')
  echo
  echo "== weftd doctor on $node"
  kubectl -n weft-system exec "$weftd" -c weftd -- weftd doctor || failed=1
done

if [ "$failed" = 0 ]; then echo; echo "every check passed"; else echo; echo "some checks FAILED"; fi
exit "$failed"
