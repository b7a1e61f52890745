#!/bin/sh
# Puts the fleetscale binary at /usr/local/bin/fleetscale.
#
#   fleetscale-install URL SHA256 GIT_URL GIT_BRANCH FEATURES
#
# With a URL: downloads that release artifact (a bare binary or a .tar.gz holding one),
# checks it against SHA256 when one is given, and installs it.
# Without: builds fleetscale from GIT_URL's GIT_BRANCH with cargo (the toolchain from
# rustup, which also serves the Rust version the project needs), with only the cloud
# FEATURES the VM needs ("aws" or "azure"). The build compiles that cloud's SDK: expect it
# to take a long while on a small VM; a swap file keeps it within memory.
set -eu
url=$1 sha256=$2 git_url=$3 git_branch=$4 features=$5
bin=/usr/local/bin/fleetscale

if [ -n "$url" ]; then
  work=$(mktemp -d)
  curl -fsSL --retry 5 --proto '=https' -o "$work/download" "$url"
  if [ -n "$sha256" ]; then
    echo "$sha256  $work/download" | sha256sum -c -
  fi
  case "$url" in
    *.tar.gz | *.tgz)
      tar -xzf "$work/download" -C "$work"
      found=$(find "$work" -type f -name fleetscale | head -n 1)
      [ -n "$found" ] || { echo "no file named fleetscale in $url" >&2; exit 1; }
      install -m 0755 "$found" "$bin"
      ;;
    *) install -m 0755 "$work/download" "$bin" ;;
  esac
  rm -rf "$work"
else
  if [ ! -e /swapfile ]; then
    fallocate -l 4G /swapfile
    chmod 600 /swapfile
    mkswap /swapfile
    swapon /swapfile
  fi
  export RUSTUP_HOME=/opt/rust/rustup CARGO_HOME=/opt/rust/cargo
  curl -fsSL --proto '=https' --tlsv1.2 https://sh.rustup.rs |
    sh -s -- -y --profile minimal --default-toolchain stable --no-modify-path
  /opt/rust/cargo/bin/cargo install --locked --root /usr/local \
    --git "$git_url" --branch "$git_branch" \
    --no-default-features --features "$features" fleetscale
  swapoff /swapfile && rm -f /swapfile
fi
"$bin" --version
