#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver (headless browser tests) if missing.
# Usage (as root): tests/browser/install_chromium.sh   Idempotent; prints the two versions.
set -euo pipefail

if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver >/dev/null
fi
/usr/bin/chromium --version
/usr/bin/chromedriver --version
