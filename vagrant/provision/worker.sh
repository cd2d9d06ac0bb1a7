#!/usr/bin/env bash
# A worker: weft's image from the control plane (which builds it: wait for it), then
# `kubeadm join` with the lab's bootstrap token (waiting for the API server).
set -euo pipefail

: "${WEFT_CP_IP:?}" "${WEFT_TOKEN:?}"

# Up to an hour: the control plane builds the image first, and libvirt brings VMs up in
# parallel.
for _ in $(seq 720); do
  if curl -fsS -o /tmp/weft.tar "http://$WEFT_CP_IP:8080/weft.tar"; then
    break
  fi
  sleep 5
done
[ -s /tmp/weft.tar ] || { echo "no image at http://$WEFT_CP_IP:8080/weft.tar" >&2; exit 1; }
ctr -n k8s.io images import /tmp/weft.tar
rm -f /tmp/weft.tar

if [ ! -f /etc/kubernetes/kubelet.conf ]; then
  for _ in $(seq 120); do
    # The lab's own token; the CA is not pinned, as the workers have no copy of it.
    if kubeadm join "$WEFT_CP_IP:6443" --token "$WEFT_TOKEN" \
        --discovery-token-unsafe-skip-ca-verification; then
      break
    fi
    kubeadm reset --force >/dev/null 2>&1 || true
    sleep 10
  done
fi
[ -f /etc/kubernetes/kubelet.conf ] || { echo "could not join $WEFT_CP_IP:6443" >&2; exit 1; }
