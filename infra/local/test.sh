#!/usr/bin/env bash
# The project's test command: installs the package and the services, starts them on
# 127.0.0.1 and runs the whole test suite (unit + integration). Extra args go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
python3 -m pip install -q -e ".[dev,models]"
bash infra/local/install.sh
bash infra/local/start.sh
python3 -m pytest "$@"
