#!/usr/bin/env bash
# VoxCeleb1 from a local path -> <out_dir>/sid/{train,dev,test} (iden_split.txt) and
# <out_dir>/asv/{train,dev,test} (VoxCeleb1-O speakers held out; test trials from veri_test2.txt).
#   local/data.sh --voxceleb1_dir DIR [--nj 8] [out_dir (default: data)]
# Nothing is downloaded: get VoxCeleb1 yourself and unpack it.
set -euo pipefail

voxceleb1_dir=""   # holds wav/ (or vox1_dev_wav/wav + vox1_test_wav/wav), iden_split.txt, veri_test2.txt
nj=8               # parallel header reads for utt2dur

help_message="Usage: $0 --voxceleb1_dir DIR [--nj N] [out_dir (default: data)]"
. utils/parse_options.sh

if [ $# -gt 1 ]; then
    echo "$help_message" >&2; exit 2
fi
out_dir="${1:-data}"
if [ -z "${voxceleb1_dir}" ]; then
    echo "$0: pass --voxceleb1_dir DIR (VoxCeleb1 with wav/, iden_split.txt, veri_test2.txt; nothing is downloaded)" >&2
    exit 2
fi
if [ ! -d "${voxceleb1_dir}" ]; then
    echo "$0: --voxceleb1_dir ${voxceleb1_dir} does not exist" >&2; exit 2
fi
speechssl prepare voxceleb1 --root "${voxceleb1_dir}" --out "${out_dir}" --nj "${nj}"
