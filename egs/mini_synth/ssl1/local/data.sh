#!/usr/bin/env bash
# Build the embedded synthetic corpus with espeak-ng (offline, ~1 min for 3 h on 2 cores).
#   local/data.sh [--hours 3] [--seed 0] [--nj 2] [--clean false] [out_dir (default: data)]
# Writes <out_dir>/{read,keywords,commands}/{train,dev,test}, <out_dir>/asv/test, the wavs
# under <out_dir>/wav and <out_dir>/summary.json; see README "Embedded corpus".
set -euo pipefail

hours=3      # total hours of audio over all subsets
seed=0       # the same seed gives byte-identical files
nj=2         # parallel processes
clean=false  # true: no noise, gain or speed perturbation

help_message="Usage: $0 [--hours H] [--seed S] [--nj N] [--clean true|false] [out_dir (default: data)]"
. utils/parse_options.sh

if [ $# -gt 1 ]; then
    echo "$help_message" >&2
    exit 2
fi
out_dir="${1:-data}"
clean_opt=""
[ "${clean}" = true ] && clean_opt="--clean"

# shellcheck disable=SC2086
speechssl synth --out "${out_dir}" --hours "${hours}" --seed "${seed}" --nj "${nj}" ${clean_opt}
