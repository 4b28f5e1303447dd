#!/usr/bin/env bash
# The one command that installs what the tests need and runs them all (README: Testing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash test/install-deps.sh
npm run lint
npm test
