#!/usr/bin/env bash
# LibriSpeech from a local copy into data/<subset> (train-clean-100 -> data/train_clean_100),
# plus data/train_960 (the three training subsets combined) when they are all asked for.
# Nothing is downloaded: get LibriSpeech (OpenSLR 12) yourself and pass its folder.
#   local/data.sh --librispeech_dir /data/LibriSpeech [--subsets "train-clean-100 dev-clean"] [--nj 8]
set -euo pipefail

librispeech_dir=""   # folder holding the subsets (dev-clean/, train-clean-100/, ...)
subsets="train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other"
nj=8                 # parallel header reads for utt2dur

help_message="Usage: $0 --librispeech_dir PATH [--subsets \"...\"] [--nj N]"
. utils/parse_options.sh

if [ -z "${librispeech_dir}" ]; then
    echo "$0: --librispeech_dir is required: the local folder holding the LibriSpeech subsets" \
         "(nothing is downloaded; get OpenSLR resource 12 yourself)" >&2
    exit 2
fi
# shellcheck disable=SC2086
speechssl prepare librispeech --root "${librispeech_dir}" --out data --subsets ${subsets} --nj "${nj}"
if [ -d data/train_clean_100 ] && [ -d data/train_clean_360 ] && [ -d data/train_other_500 ]; then
    speechssl data combine --out data/train_960 data/train_clean_100 data/train_clean_360 data/train_other_500
fi
