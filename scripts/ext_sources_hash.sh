#!/usr/bin/env bash
# Prints a hash of the extension's sources (csrc/, setup.py): scripts/gpu_prebuild.sh stamps a prebuilt
# extension with it, and scripts/gpu_check.sh rebuilds one whose stamp no longer matches the sources.
set -euo pipefail
cd "$(dirname "$0")/.."
find csrc setup.py -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
