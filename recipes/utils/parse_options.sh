#!/usr/bin/env bash
# Source this after declaring a recipe's options as shell variables:
#
#     stage=1           # first stage to run
#     n_clusters="50"   # k-means clusters per iteration
#     . utils/parse_options.sh
#
# Every `--some_option value` (or `--some-option=value`) on the command line
# sets the variable `some_option`. An option that names no declared variable
# is an error (exit 2): a misspelt option must never be silently ignored.
# `--help` prints the script's `help_message` (or its option block) and exits.
# Arguments that do not start with `--` are left in "$@" for the caller.

_ssl_positional=()
while [ $# -gt 0 ]; do
    case "$1" in
        --help|-h)
            if [ -n "${help_message:-}" ]; then
                printf '%s\n' "$help_message"
            else
                echo "Usage: $0 [--option value ...]; options (default in the script):"
                grep -E '^[a-z_][a-z0-9_]*=' "$0" | sed 's/^/  --/'
            fi
            exit 0
            ;;
        --*=*)
            _ssl_name="${1%%=*}"; _ssl_value="${1#*=}"; shift
            ;;
        --*)
            _ssl_name="$1"
            if [ $# -lt 2 ]; then
                echo "$0: option $1 needs a value" >&2
                exit 2
            fi
            _ssl_value="$2"; shift 2
            ;;
        *)
            _ssl_positional+=("$1"); shift; continue
            ;;
    esac
    _ssl_name="${_ssl_name#--}"
    _ssl_name="${_ssl_name//-/_}"
    if ! [[ "$_ssl_name" =~ ^[a-zA-Z_][a-zA-Z0-9_]*$ ]] || [ -z "${!_ssl_name+set}" ]; then
        echo "$0: unknown option --${_ssl_name} (see $0 --help)" >&2
        exit 2
    fi
    printf -v "$_ssl_name" '%s' "$_ssl_value"
done
set -- "${_ssl_positional[@]+"${_ssl_positional[@]}"}"
unset _ssl_name _ssl_value _ssl_positional
