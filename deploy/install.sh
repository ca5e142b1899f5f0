#!/usr/bin/env bash
# Installs Provisor into its own virtual environment, the same way on a server and in the
# container image:
#   deploy/install.sh [--prefix DIR] [--source DIR_OR_WHEEL] [--python PYTHON]
#
# --prefix  where the virtual environment goes (default /opt/provisor); the commands end up in
#           DIR/bin (DIR/bin/provisor)
# --source  what to install: a source checkout (default: the one this script is in) or a wheel
# --python  the interpreter to build the environment with (default python3; 3.11 or newer)
#
# Nothing else on the machine is changed: no user, no service, no configuration. The systemd
# units in deploy/systemd and docs/operations.md ("Production") take it from there.
set -euo pipefail

prefix=/opt/provisor
source_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python=python3

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --source) source_dir="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) printf 'error: unknown argument %s (see --help)\n' "$1" >&2; exit 2 ;;
  esac
done

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  printf 'error: %s is not Python 3.11 or newer\n' "$python" >&2
  exit 1
fi
if [ ! -e "$source_dir" ]; then
  printf 'error: no such source: %s\n' "$source_dir" >&2
  exit 1
fi

"$python" -m venv "$prefix"
"$prefix/bin/pip" install --quiet --upgrade pip
"$prefix/bin/pip" install --quiet "$source_dir"
"$prefix/bin/provisor" --help > /dev/null  # the command runs
"$prefix/bin/python" -c 'import importlib.metadata as m; print("provisor", m.version("provisor"))'
