#!/usr/bin/env bash
# Creates (once) the Python 3 virtualenv the integration tests' clients run in, and prints
# its path. Cached outside the tree, keyed on tests/clients/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."

requirements=tests/clients/requirements.txt
key=$( (python3 --version; cat "$requirements") | sha256sum | cut -c1-16)
venv="${XDG_CACHE_HOME:-$HOME/.cache}/ringws/python-$key"
if [ -x "$venv/bin/python" ] && [ -f "$venv/.complete" ]; then
  echo "$venv"
  exit 0
fi
echo "tests: building the Python virtualenv in $venv (once)" >&2
rm -rf "$venv"
python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
touch "$venv/.complete"
echo "$venv"
