#!/usr/bin/env bash
# Refresh the third-party files of the web UI and of its browser tests from released npm
# packages (`npm pack`: the registry's tarball, checked against its published integrity).
#
# The UI itself ships no third-party JavaScript (plain ES modules in
# services/gateway/src/echotune/gateway/ui/static/, no build step). The browser tests inject
# axe-core (tests/browser/vendor/). Versions are pinned below: bump one, run
# `make vendor-ui` (or this script), look at the diff, commit the result.
set -euo pipefail

AXE_CORE_VERSION="4.14.1"

ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
TESTS_VENDOR="$ROOT/tests/browser/vendor"

command -v npm >/dev/null 2>&1 || { echo "npm is needed (apt-get install -y npm)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# pack NAME VERSION -> unpacks the package into $work/NAME and prints its integrity
pack() {
  local name="$1" version="$2" json
  json="$(npm pack --json --silent --pack-destination "$work" "$name@$version")"
  mkdir -p "$work/$name"
  tar -xzf "$work/$(printf '%s' "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["filename"])')" \
    -C "$work/$name" --strip-components=1
  printf '%s' "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["integrity"])'
}

mkdir -p "$TESTS_VENDOR"
axe_integrity="$(pack axe-core "$AXE_CORE_VERSION")"
install -m 644 "$work/axe-core/axe.min.js" "$TESTS_VENDOR/axe.min.js"
install -m 644 "$work/axe-core/LICENSE" "$TESTS_VENDOR/axe-core.LICENSE"

cat > "$TESTS_VENDOR/VERSIONS" <<VERSIONS
# Written by services/gateway/scripts/vendor_ui.sh; do not edit by hand.
axe-core $AXE_CORE_VERSION MPL-2.0 $axe_integrity  axe.min.js axe-core.LICENSE
VERSIONS
echo "vendored axe-core $AXE_CORE_VERSION into ${TESTS_VENDOR#"$ROOT/"}"
