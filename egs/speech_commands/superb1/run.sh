#!/usr/bin/env bash
# SUPERB KS on Speech Commands v0.02 (12 classes) from a local copy; nothing is downloaded.
#   ./run.sh --speech_commands_dir /data/speech_commands_v0.02 --upstreams "fbank /path/to/checkpoint"
# Other options go to recipes/superb.sh, e.g. --stage 3 --lr_sweep "1e-2 1e-3 1e-4" --ngpu 1
set -euo pipefail
cd "$(dirname "$0")"

speech_commands_dir=""   # the unpacked speech_commands_v0.02 (required for stage 1)
args=()
while [ $# -gt 0 ]; do  # --speech_commands_dir is this corpus's; everything else goes to superb.sh
    if [ "$1" = --speech_commands_dir ] && [ $# -ge 2 ]; then speech_commands_dir="$2"; shift 2; else args+=("$1"); shift; fi
done
data_opts="--nj 4"
[ -n "${speech_commands_dir}" ] && data_opts="--speech_commands_dir ${speech_commands_dir} ${data_opts}"

./superb.sh \
    --tasks ks \
    --upstreams fbank \
    --downstream_config "conf/{task}.yaml" \
    --local_data_opts "${data_opts}" \
    "${args[@]+"${args[@]}"}"
