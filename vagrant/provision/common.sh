#!/usr/bin/env bash
# Every VM: the private network's IPv6 address, kernel settings, containerd, and kubeadm, kubelet
# and kubectl from the Kubernetes package repository (pkgs.k8s.io), WEFT_K8S's minor version.
# The kubelet runs on the private addresses (never the NAT interface's 10.0.2.15).
set -euo pipefail

: "${WEFT_NODE_IP:?}" "${WEFT_NODE_IP6:?}" "${WEFT_K8S:?}"
export DEBIAN_FRONTEND=noninteractive

# The interface holding the private IPv4 address gets the IPv6 one too, now and at every boot.
iface=$(ip -o -4 addr show | awk -v ip="$WEFT_NODE_IP" '$4 ~ "^"ip"/" {print $2; exit}')
if [ -z "$iface" ]; then
  echo "no interface holds $WEFT_NODE_IP" >&2
  exit 1
fi
cat > /etc/systemd/system/weft-ipv6.service <<UNIT
[Unit]
Description=weft lab: the private network's IPv6 address
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/ip -6 addr replace ${WEFT_NODE_IP6}/64 dev ${iface} nodad

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now weft-ipv6.service

# Kubernetes wants no swap; pods need forwarding (weftd sets it too, and keeps it).
swapoff -a
sed -i '/\sswap\s/s/^/#/' /etc/fstab
cat > /etc/sysctl.d/90-weft-lab.conf <<'SYSCTL'
net.ipv4.ip_forward = 1
net.ipv6.conf.all.forwarding = 1
SYSCTL
sysctl --system >/dev/null

apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  containerd apt-transport-https ca-certificates curl gpg nftables wireguard-tools >/dev/null
# containerd with the systemd cgroup driver, as the kubelet's default expects.
mkdir -p /etc/containerd
containerd config default | sed 's/SystemdCgroup = false/SystemdCgroup = true/' > /etc/containerd/config.toml
systemctl restart containerd

keyring=/etc/apt/keyrings/kubernetes-apt-keyring.gpg
mkdir -p /etc/apt/keyrings
curl -fsSL "https://pkgs.k8s.io/core:/stable:/v${WEFT_K8S}/deb/Release.key" | gpg --dearmor --yes -o "$keyring"
echo "deb [signed-by=$keyring] https://pkgs.k8s.io/core:/stable:/v${WEFT_K8S}/deb/ /" \
  > /etc/apt/sources.list.d/kubernetes.list
apt-get update -qq
apt-get install -y -qq kubelet kubeadm kubectl >/dev/null
apt-mark hold kubelet kubeadm kubectl >/dev/null

# The kubelet's own addresses: both families, on the private network.
echo "KUBELET_EXTRA_ARGS=--node-ip=${WEFT_NODE_IP},${WEFT_NODE_IP6}" > /etc/default/kubelet
systemctl enable kubelet
