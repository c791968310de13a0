#!/bin/sh
# Create .bench/peers-venv with the supervisord and circus versions that bench/compare/tools.py
# pins (bench/compare_bench.py does the same on first use). A venv of their own: the tools compared
# against never become dependencies of the project. Run from anywhere: ./bench/compare/setup-peers.sh
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
cd "$root/bench"
exec "$python" -c 'from compare.tools import tools_venv; print(tools_venv())'
