#!/usr/bin/env bash
# The control plane: build weft's image from this checkout (/weft) and serve it to the workers,
# `kubeadm init` (vagrant/kubeadm.yaml: dual stack, node CIDRs allocated), then weft from
# deploy/ through vagrant/kustomize/$WEFT_BACKEND, its underlay chosen with --iface-can-reach.
set -euo pipefail

: "${WEFT_NODE_IP:?}" "${WEFT_NODE_IP6:?}" "${WEFT_TOKEN:?}" "${WEFT_BACKEND:?}"
export DEBIAN_FRONTEND=noninteractive
image=localhost/weft:dev
image_dir=/srv/weft-image

# 1. The image, built here from the synced sources with buildah (no daemon needed), loaded into
#    containerd's Kubernetes namespace, and served to the workers over the private network.
apt-get install -y -qq --no-install-recommends buildah python3 >/dev/null
mkdir -p "$image_dir"
if [ ! -s "$image_dir/weft.tar" ] || [ "${WEFT_REBUILD:-0}" = 1 ]; then
  echo "building $image from /weft (a release build of weft: the slowest step of the lab)"
  buildah build --layers -f /weft/Containerfile -t "$image" /weft
  rm -f "$image_dir/weft.tar.partial"
  buildah push "$image" "docker-archive:$image_dir/weft.tar.partial:$image"
  mv "$image_dir/weft.tar.partial" "$image_dir/weft.tar"
fi
ctr -n k8s.io images import "$image_dir/weft.tar"
systemctl stop weft-image-server.service 2>/dev/null || true
systemd-run --unit=weft-image-server --property=Restart=on-failure \
  python3 -m http.server 8080 --bind "$WEFT_NODE_IP" --directory "$image_dir"

# 2. The cluster.
if [ ! -f /etc/kubernetes/admin.conf ]; then
  mkdir -p /etc/weft-lab
  sed -e "s/@TOKEN@/$WEFT_TOKEN/" -e "s/@CP_IP@/$WEFT_NODE_IP/g" -e "s/@CP_IP6@/$WEFT_NODE_IP6/" \
    /weft/vagrant/kubeadm.yaml > /etc/weft-lab/kubeadm.yaml
  kubeadm init --config /etc/weft-lab/kubeadm.yaml
fi
export KUBECONFIG=/etc/kubernetes/admin.conf
install -d -o vagrant -g vagrant /home/vagrant/.kube
install -o vagrant -g vagrant -m 0600 /etc/kubernetes/admin.conf /home/vagrant/.kube/config

# 3. weft: deploy/ as the overlay for the backend says, with the image built above and the
#    underlay address chosen as the one that reaches the control plane (the overlay names the
#    default network's 192.168.56.10; another WEFT_NET replaces it).
kubectl kustomize "/weft/vagrant/kustomize/$WEFT_BACKEND" \
  | sed "s/192\.168\.56\.10\b/$WEFT_NODE_IP/g" \
  | kubectl apply -f -
kubectl -n weft-system rollout status daemonset/weftd --timeout=10m
