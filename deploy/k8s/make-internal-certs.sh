#!/usr/bin/env sh
# The secret-generator alternative to cert-manager (deploy/k8s/base/internal-tls.yaml):
# a private CA and the internal plane's six certificates made with openssl (the four
# services', Kafka's brokers' and Redis's; keys in PKCS#8, as Kafka's PEM keystore needs),
# plus the Redis Cluster overlay's (`--redis-cluster`), stored as the
# Secrets the manifests mount (tls.crt, tls.key, ca.crt). Re-run to rotate: the services
# re-read the files when the Secret volume updates. Usage: make-internal-certs.sh NAMESPACE [--redis-cluster]
set -eu
NS="${1:?usage: make-internal-certs.sh NAMESPACE [--redis-cluster]}"
DIR="$(mktemp -d)"
trap 'rm -rf "$DIR"' EXIT
cd "$DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj "/CN=shortlist internal CA" -keyout ca.key -out ca.crt
issue() {  # NAME CN USAGE SANS [SECRET]
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
    -keyout "$1.key" -out "$1.csr"
  printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=%s\nsubjectAltName=%s\n' "$3" "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
    -extfile "$1.ext" -out "$1.crt"
  kubectl -n "$NS" create secret generic "${5:-shortlist-$1-internal-tls}" --type kubernetes.io/tls \
    --from-file=tls.crt="$1.crt" --from-file=tls.key="$1.key" --from-file=ca.crt=ca.crt \
    --dry-run=client -o yaml | kubectl apply -f -
}
issue gateway gateway.shortlist.internal clientAuth DNS:gateway.shortlist.internal
for s in retrieval ranking feedback; do
  issue "$s" "$s.shortlist.internal" serverAuth "DNS:$s,DNS:$s.shortlist.internal"
done
issue kafka-broker kafka-broker.shortlist.internal serverAuth,clientAuth \
  "DNS:kafka,DNS:kafka-0.kafka,DNS:kafka-1.kafka,DNS:kafka-2.kafka,DNS:kafka-broker.shortlist.internal" \
  shortlist-kafka-broker-tls
issue redis redis.shortlist.internal serverAuth \
  "DNS:redis,DNS:redis-0.redis,DNS:redis.shortlist.internal,DNS:localhost,IP:127.0.0.1" \
  shortlist-redis-tls
if [ "${2:-}" = "--redis-cluster" ]; then
  nodes=""
  for i in 0 1 2 3 4 5; do nodes="$nodes,DNS:redis-cluster-$i.redis-cluster"; done
  issue redis-cluster redis-cluster.shortlist.internal serverAuth,clientAuth \
    "DNS:redis-cluster$nodes,DNS:redis-cluster.shortlist.internal,DNS:localhost,IP:127.0.0.1" \
    shortlist-redis-cluster-tls
fi
