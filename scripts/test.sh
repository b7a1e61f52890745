#!/usr/bin/env bash
# Installs what the tests need (when missing), builds once, runs every test, then checks
# the oracle against BENCHMARK.md's reference figures on the shared traces.
#
#   ./scripts/test.sh            everything
#   SKIP_INSTALL=1 ./scripts/test.sh   do not install anything (fail if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ -z "${SKIP_INSTALL:-}" ]; then
  say "test prerequisites"
  if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends prometheus
  fi
  # The status page's test drives Debian's chromium headless through chromedriver.
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends chromium chromium-driver
  fi
  # The etcd client crate compiles etcd's protobuf API at build time (protoc and the
  # well-known types); the coordination tests run a real etcd, and etcdctl helps by hand.
  if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null || ! command -v protoc >/dev/null \
    || [ ! -f /usr/include/google/protobuf/descriptor.proto ]; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
      protobuf-compiler libprotobuf-dev etcd-server etcd-client
  fi
  python3 -m pip install --quiet --disable-pip-version-check -r scripts/test-requirements.txt
fi
for tool in prometheus promtool moto_server chromium chromedriver etcd etcdctl protoc; do
  command -v "$tool" >/dev/null || { echo "missing $tool: see scripts/test.sh for how it is installed" >&2; exit 1; }
done

# One release build serves the tests and the benchmark check.
say "build"
cargo build --release --workspace --all-targets
say "tests"
cargo test --release --workspace --no-fail-fast
say "benchmark check (oracle against BENCHMARK.md's reference figures)"
./scripts/benchmark.sh --check
