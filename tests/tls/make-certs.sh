#!/usr/bin/env bash
# Makes the certificates of the TLS tests (tests/tls/tls_test.sh) in DIR:
#   ca.crt             a test CA (ca.key signs the others)
#   server.crt/.key    the servers' certificate: CN localhost, SANs DNS:localhost
#                      and IP:127.0.0.1, signed by ca
#   client.crt/.key    a client certificate (CN llmq-worker) signed by ca, for
#                      mutual TLS
#   other-ca.crt       another CA, which signed nothing here: a client trusting
#                      only it must refuse the servers
# Keys are mode 0600 (PostgreSQL refuses a key others can read).
#
# Usage: tests/tls/make-certs.sh DIR
set -euo pipefail

dir=${1:?usage: make-certs.sh DIR}
mkdir -p -- "$dir"
cd -- "$dir"
umask 077

days=2
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() {  # ca NAME SUBJECT
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -subj "$2" -days "$days" -out "$1.crt" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}
leaf() {  # leaf NAME SUBJECT EXTENSIONS
  key "$1.key"
  openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
  printf '%s\n' "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

ca ca "/CN=llmq test CA"
ca other-ca "/CN=llmq other test CA"
leaf server "/CN=localhost" "$(printf '%s\n' 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
  'extendedKeyUsage=serverAuth' 'keyUsage=critical,digitalSignature')"
leaf client "/CN=llmq-worker" "$(printf '%s\n' 'extendedKeyUsage=clientAuth' 'keyUsage=critical,digitalSignature')"
chmod 0644 ./*.crt
chmod 0600 ./*.key
