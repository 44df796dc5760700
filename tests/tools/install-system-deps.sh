#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, and nothing when they are already there.
#
#   postgresql  initdb/pg_ctl under /usr/lib/postgresql/*/bin: tests start a throwaway cluster
#               of their own on 127.0.0.1 and a random port (never the system service).
#   prometheus  for `promtool check metrics` on the /metrics output.
#   systemd     for `systemd-analyze verify` and `systemd-analyze security --offline` on the
#               unit files (offline: no systemd needs to run, and none is started).
#   curl, jq    the docs' shell examples use them, and tests/docs/test_examples.py runs those.
#   golang-go, protoc-gen-go, protoc-gen-go-grpc, golang-google-grpc-dev,
#   golang-github-golang-protobuf-1-5-dev, golang-google-genproto-dev
#               the Go client: `make clients-go` (and so `make gen-check`) runs the two plugins,
#               and tests/client/test_go_client.py builds the example against these packages
#               (GOPATH mode, /usr/share/gocode; no network).
#
# Idempotent and fast when everything is present (no apt-get update then). Needs root, or sudo.
# Service start-up during installation is suppressed with a temporary policy-rc.d, so the
# packages do not leave a system PostgreSQL or Prometheus running.
set -euo pipefail

have_postgres() {
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
    && compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null \
    && id -u postgres >/dev/null 2>&1
}
have_promtool() { command -v promtool >/dev/null 2>&1 || [ -x /usr/bin/promtool ]; }
have_runuser() { command -v runuser >/dev/null 2>&1; }
have_systemd_analyze() { command -v systemd-analyze >/dev/null 2>&1; }
have_curl() { command -v curl >/dev/null 2>&1; }
have_jq() { command -v jq >/dev/null 2>&1; }
have_go() { command -v go >/dev/null 2>&1; }
have_protoc_gen_go() { command -v protoc-gen-go >/dev/null 2>&1; }
have_protoc_gen_go_grpc() { command -v protoc-gen-go-grpc >/dev/null 2>&1; }
GOCODE=/usr/share/gocode/src
have_go_grpc() { [ -d "$GOCODE/google.golang.org/grpc" ]; }
have_go_protobuf() { [ -d "$GOCODE/github.com/golang/protobuf" ]; }
have_go_genproto() { [ -d "$GOCODE/google.golang.org/genproto/googleapis/rpc/errdetails" ]; }

missing=()
have_postgres || missing+=(postgresql)
have_promtool || missing+=(prometheus)
have_runuser || missing+=(util-linux)
have_systemd_analyze || missing+=(systemd)
have_curl || missing+=(curl)
have_jq || missing+=(jq)
have_go || missing+=(golang-go)
have_protoc_gen_go || missing+=(protoc-gen-go)
have_protoc_gen_go_grpc || missing+=(protoc-gen-go-grpc)
have_go_grpc || missing+=(golang-google-grpc-dev)
have_go_protobuf || missing+=(golang-github-golang-protobuf-1-5-dev)
have_go_genproto || missing+=(golang-google-genproto-dev)

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-system-deps: postgresql, promtool, systemd-analyze, curl, jq and Go already present"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: missing ${missing[*]} and apt-get is not available;" \
    "install them with your system's package manager" >&2
  exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "install-system-deps: missing ${missing[*]}; run this script as root" >&2
    exit 1
  fi
fi

# Keep dpkg from starting services (a system PostgreSQL on 5432, Prometheus on 9090) while
# installing: an existing policy-rc.d is respected, otherwise a temporary one is put in place.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
  "${SUDO[@]}" chmod 0755 "$policy"
  trap '"${SUDO[@]}" rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-system-deps: installing ${missing[*]}"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  "${missing[@]}" >/dev/null

have_postgres || { echo "install-system-deps: initdb/pg_ctl still missing" >&2; exit 1; }
have_promtool || { echo "install-system-deps: promtool still missing" >&2; exit 1; }
have_systemd_analyze || { echo "install-system-deps: systemd-analyze still missing" >&2; exit 1; }
have_go && have_protoc_gen_go && have_protoc_gen_go_grpc && have_go_grpc && have_go_protobuf \
  && have_go_genproto || { echo "install-system-deps: the Go toolchain or packages still missing" >&2; exit 1; }
echo "install-system-deps: done"
