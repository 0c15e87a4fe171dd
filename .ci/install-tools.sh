#!/usr/bin/env bash
# Installs the tools tests/test_deploy.py runs, only when they are missing (idempotent):
#   kubectl  (renders deploy/k8s with its built-in kustomize; needs >= 1.27)
#   promtool (Debian package `prometheus`: checks the alert rules and scrape config)
#   chromium (Debian package: the headless browser the console tests drive with Playwright,
#            whose own browser download needs the internet)
# Debian bookworm's own kubectl (package kubernetes-client) is 1.20, too old for the
# manifests; when apt has no `kubectl` package, the Kubernetes project's apt repository
# (pkgs.k8s.io) is added first.
set -euo pipefail

KUBECTL_MINOR="${KUBECTL_MINOR:-v1.32}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

apt_updated=0
apt_update() {
  if [ "$apt_updated" -eq 0 ]; then
    $SUDO apt-get update -qq
    apt_updated=1
  fi
}

has_apt_candidate() {
  local candidate
  candidate="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')"
  [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}

if ! command -v kubectl >/dev/null 2>&1; then
  echo "install-tools: installing kubectl"
  apt_update
  if ! has_apt_candidate kubectl; then
    echo "install-tools: adding the pkgs.k8s.io apt repository ($KUBECTL_MINOR)"
    $SUDO apt-get install -y -qq ca-certificates curl gnupg
    $SUDO mkdir -p -m 755 /etc/apt/keyrings
    curl -fsSL "https://pkgs.k8s.io/core:/stable:/${KUBECTL_MINOR}/deb/Release.key" \
      | $SUDO gpg --dearmor --yes -o /etc/apt/keyrings/kubernetes-apt-keyring.gpg
    echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/${KUBECTL_MINOR}/deb/ /" \
      | $SUDO tee /etc/apt/sources.list.d/kubernetes.list >/dev/null
    apt_updated=0
    apt_update
  fi
  $SUDO apt-get install -y -qq kubectl
fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "install-tools: installing prometheus (promtool)"
  apt_update
  # The package's post-install may try to start the daemon; nothing here needs it running.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
fi

if ! command -v chromium >/dev/null 2>&1; then
  echo "install-tools: installing chromium"
  apt_update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

kubectl version --client 2>/dev/null | head -2
promtool --version 2>&1 | head -1
chromium --version 2>&1 | head -1
