#!/usr/bin/env bash
# Rerun the lab's last provisioning step from the host: on the control plane, a pod on every
# node, pod-to-pod on both families across nodes, pod-to-outside, and weftd doctor on every node.
#   cd vagrant && ./check.sh
set -euo pipefail
cd "$(dirname "$0")"
exec vagrant ssh weft-cp -c "sudo bash /weft/vagrant/provision/check-cluster.sh"
