#!/usr/bin/env bash
# Makes sure espeak-ng's shared library (libespeak-ng.so.1) is present: the
# embedded corpus is synthesized through it. Installs Debian's package when
# it is missing and we may; otherwise says exactly what to do.
set -u
if ldconfig -p 2>/dev/null | grep -q 'libespeak-ng\.so'; then
    exit 0
fi
echo "espeak-ng is missing: installing Debian's package espeak-ng"
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    sudo_cmd=""
elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    sudo_cmd="sudo"
else
    echo "ERROR: cannot install espeak-ng here (no apt-get or no root)." >&2
    echo "Install it yourself: Debian/Ubuntu 'apt-get install espeak-ng'," >&2
    echo "Fedora 'dnf install espeak-ng', macOS 'brew install espeak-ng'," >&2
    echo "or point SPEECHSSL_ESPEAK_LIB at libespeak-ng.so." >&2
    exit 1
fi
if ! { $sudo_cmd apt-get update -q >/dev/null && $sudo_cmd apt-get install -y -q espeak-ng >/dev/null; }; then
    echo "ERROR: 'apt-get install espeak-ng' failed; install it by hand and rerun." >&2
    exit 1
fi
