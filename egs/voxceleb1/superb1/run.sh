#!/usr/bin/env bash
# SUPERB SID and ASV on VoxCeleb1 from a local copy; nothing is downloaded.
#   ./run.sh --voxceleb1_dir /data/VoxCeleb1 --upstreams "fbank /path/to/checkpoint"
# Other options go to recipes/superb.sh, e.g. --tasks asv --stage 3 --ngpu 1
set -euo pipefail
cd "$(dirname "$0")"

voxceleb1_dir=""   # holds wav/ (or vox1_dev_wav/wav + vox1_test_wav/wav), iden_split.txt, veri_test2.txt
args=()
while [ $# -gt 0 ]; do  # --voxceleb1_dir is this corpus's; everything else goes to superb.sh
    if [ "$1" = --voxceleb1_dir ] && [ $# -ge 2 ]; then voxceleb1_dir="$2"; shift 2; else args+=("$1"); shift; fi
done
data_opts="--nj 8"
[ -n "${voxceleb1_dir}" ] && data_opts="--voxceleb1_dir ${voxceleb1_dir} ${data_opts}"

./superb.sh \
    --tasks "sid asv" \
    --upstreams fbank \
    --downstream_config "conf/{task}.yaml" \
    --local_data_opts "${data_opts}" \
    "${args[@]+"${args[@]}"}"
