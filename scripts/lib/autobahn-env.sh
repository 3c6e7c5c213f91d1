#!/usr/bin/env bash
# Creates (once) the Python 2.7 virtualenv with the Autobahn test suite and prints its path.
# The suite is Python 2 only; the pins below are the last versions that still install on 2.7.
set -euo pipefail

PINS="setuptools==44.0.0 six==1.16.0 txaio==2.1.0 incremental==16.10.1 zope.interface==4.6.0
constantly==15.1.0 attrs==21.4.0 Automat==22.10.0 idna==2.10 typing==3.10.0.0 hyperlink==21.0.0
PyHamcrest==1.10.1 Twisted==19.10.0 pycparser==2.21 cffi==1.15.1 enum34==1.1.10 ipaddress==1.0.23
cryptography==3.3.2 pyOpenSSL==19.1.0 pyasn1==0.5.1 pyasn1-modules==0.3.0 service-identity==18.1.0
MarkupSafe==1.1.1 Jinja2==2.11.3 Werkzeug==1.0.1 klein==17.10.0 argparse==1.4.0 linecache2==1.0.0
traceback2==1.4.0 unittest2==1.1.0 wsaccel==0.6.6 ujson==2.0.3 autobahn==0.10.9
autobahntestsuite==25.10.1"

py27="${RINGWS_PYTHON27:-$HOME/.pyenv/versions/2.7.18/bin/python}"
if [ ! -x "$py27" ]; then
  echo "autobahn: CPython 2.7 not found at $py27 (set RINGWS_PYTHON27); the Autobahn suite needs it" >&2
  exit 1
fi

key=$(printf '%s' "$PINS" | sha256sum | cut -c1-16)
venv="${XDG_CACHE_HOME:-$HOME/.cache}/ringws/autobahn-$key"
if [ -x "$venv/bin/wstest" ] && "$venv/bin/wstest" --autobahnversion 2>/dev/null | grep -q 'AutobahnTestSuite 25.10.1'; then
  echo "$venv"
  exit 0
fi

echo "autobahn: building the Python 2.7 virtualenv in $venv (about a minute, once)" >&2
command -v cc >/dev/null || { echo "autobahn: a C compiler (cc) is needed to build wsaccel" >&2; exit 1; }
rm -rf "$venv" "$venv.tmp"
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m pip install --quiet --disable-pip-version-check --target "$tools" virtualenv==20.21.1 >&2
PYTHONPATH="$tools" python3 -m virtualenv --quiet --no-periodic-update --no-download -p "$py27" "$venv.tmp" >&2
# shellcheck disable=SC2086
"$venv.tmp/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir $PINS >&2
mv "$venv.tmp" "$venv"
# virtualenv writes absolute paths into its scripts: fix them for the final location.
grep -rl "$venv.tmp" "$venv/bin" | xargs -r sed -i "s#$venv.tmp#$venv#g"
"$venv/bin/wstest" --autobahnversion >&2
echo "$venv"
