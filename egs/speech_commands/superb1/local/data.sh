#!/usr/bin/env bash
# Speech Commands v0.02 from a local path -> <out_dir>/ks/{train,dev,test} (SUPERB's 12 classes).
#   local/data.sh --speech_commands_dir DIR [--nj 4] [out_dir (default: data)]
# Nothing is downloaded: get speech_commands_v0.02.tar.gz yourself and unpack it.
set -euo pipefail

speech_commands_dir=""  # the unpacked archive: word folders, _background_noise_, *_list.txt
nj=4                    # parallel header reads for utt2dur

help_message="Usage: $0 --speech_commands_dir DIR [--nj N] [out_dir (default: data)]"
. utils/parse_options.sh

if [ $# -gt 1 ]; then
    echo "$help_message" >&2; exit 2
fi
out_dir="${1:-data}"
if [ -z "${speech_commands_dir}" ]; then
    echo "$0: pass --speech_commands_dir DIR (the unpacked speech_commands_v0.02; nothing is downloaded)" >&2; exit 2
fi
if [ ! -d "${speech_commands_dir}" ]; then
    echo "$0: --speech_commands_dir ${speech_commands_dir} does not exist (unpack speech_commands_v0.02 there)" >&2
    exit 2
fi
speechssl prepare speech_commands --root "${speech_commands_dir}" --out "${out_dir}/ks" --nj "${nj}"
