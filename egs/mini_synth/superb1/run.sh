#!/usr/bin/env bash
# SUPERB-style evaluation on the embedded synthetic corpus (speechssl synth), sized for a
# 2-core CPU: PR, KS, IC, SID and ASV heads over the FBANK baseline. Add a pretrained
# upstream to compare, e.g. the HuBERT of ../ssl1 (its corpus is reused, not rebuilt):
#   ./run.sh --upstreams "fbank ../ssl1/exp/hubert_iter2/checkpoints/last" \
#       --local_data_opts "--corpus_dir ../ssl1/data"
# Every head is trained at three learning rates (dev picks the best) and stops when its dev
# metric has not improved for the config's patience; --lr_sweep none trains the config's lr only.
# Options after run.sh override these, e.g. ./run.sh --stage 5 --stop_stage 5
set -euo pipefail
cd "$(dirname "$0")"

./superb.sh \
    --tasks "pr ks ic sid asv" \
    --upstreams "fbank" \
    --downstream_config "conf/{task}.yaml" \
    --local_data_opts "--hours 3 --nj 2" \
    --lr_sweep "1e-2 1e-3 1e-4" \
    "$@"
