#!/usr/bin/env sh
# The Secret `shortlist-internal` the base manifests require, with random values: the
# internal token and its sha256 (gateway -> internal services), the Redis ACL user's
# password and URL (rediss://: TLS), the Kafka SASL/SCRAM passwords.
# Usage: make-internal-secret.sh NAMESPACE [--redis-cluster]
# (--redis-cluster: the URL names the Redis Cluster overlay's nodes).
# Re-running it rotates everything: restart the pods afterwards (Redis and Kafka included).
set -eu
NS="${1:?usage: make-internal-secret.sh NAMESPACE [--redis-cluster]}"
REDIS_AT="redis:6379/0"
if [ "${2:-}" = "--redis-cluster" ]; then REDIS_AT="redis-cluster:6379/0?cluster=1"; fi
rand() { openssl rand -hex 32; }
TOKEN="$(rand)"
REDIS="$(rand)"
kubectl -n "$NS" create secret generic shortlist-internal \
  --from-literal=internal-token="$TOKEN" \
  --from-literal=internal-token-hash="$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)" \
  --from-literal=redis-password="$REDIS" \
  --from-literal=redis-url="rediss://shortlist:$REDIS@$REDIS_AT" \
  --from-literal=kafka-gateway-password="$(rand)" \
  --from-literal=kafka-feedback-password="$(rand)" \
  --from-literal=kafka-archiver-password="$(rand)" \
  --dry-run=client -o yaml | kubectl apply -f -
