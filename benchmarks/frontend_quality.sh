#!/usr/bin/env bash
# The Fast-HuBERT trade, quality side: the mini HuBERT (4 pre-LN layers x 128) pretrained for the
# same number of updates on the same MFCC k-means units (K=50) of the embedded corpus, once with
# the filterbank frontend (conf/pretrain_hubert_tiny.yaml) and once with a conv waveform frontend
# of the same width (7 layers x 128 channels, 50 Hz). Each model's layer 2 is clustered (K=100)
# and scored against the forced phone alignments (PNMI, purities), as the recipe's iteration 2
# would. The last column is each run's audio seconds per wall-clock second from its
# train_summary.json (validation and checkpoints included); the step throughput of the two
# frontends is measured cleanly by `python -m benchmarks --only frontends`.
#
#   benchmarks/frontend_quality.sh [WORK_DIR] [UPDATES] [HOURS]
#
# Runs egs/mini_synth/ssl1 in WORK_DIR (default /tmp/speechssl-frontends); writes
# WORK_DIR/frontend_quality.md. About 20 minutes on 2 CPU cores with the defaults.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/speechssl-frontends}
updates=${2:-1000}
hours=${3:-3}

# the project venv (make install) when there is one
[ -x "${repo}/.venv/bin/speechssl" ] && export PATH="${repo}/.venv/bin:${PATH}"
mkdir -p "${work}"
cd "${work}"
for f in run.sh local conf; do [ -e "${f}" ] || cp -r "${repo}/egs/mini_synth/ssl1/${f}" .; done
for f in ssl.sh utils; do [ -e "${f}" ] || ln -s "${repo}/recipes/${f}" .; done
fbank=conf/pretrain_hubert_tiny.yaml
conv=conf/pretrain_hubert_tiny_conv.yaml
# the same file with the frontend section swapped for a conv stack of the subsampler's width
awk '/^  frontend:/ {print "  frontend:\n    type: conv\n    conv_dim: [128, 128, 128, 128, 128, 128, 128]"; skip=1; next}
     skip && /^  [a-z]/ {skip=0} !skip' "${fbank}" > "${conv}"

common=(--local_data_opts "--hours ${hours} --nj 2" --n_clusters "50 100" --km_layers 2
        --pretrain_args "--max-steps ${updates}")
# data, MFCC features, K=50 units and their quality (shared by both runs)
./run.sh "${common[@]}" --pretrain_configs "${fbank}" --stage 1 --stop_stage 6
for fe in fbank conv; do
    cfg=${fbank}; [ "${fe}" = conv ] && cfg=${conv}
    ./run.sh "${common[@]}" --tag "hubert_${fe}" --pretrain_configs "${cfg}" --stage 7 --stop_stage 7
    ./run.sh "${common[@]}" --tag "hubert_${fe}" --pretrain_configs "${cfg} ${cfg}" --stage 3 --stop_stage 6
done

python - "${updates}" <<'EOF' | tee frontend_quality.md
import json, sys
from pathlib import Path

updates = sys.argv[1]
print("| frontend | updates | PNMI (layer 2, K=100) | phone purity | cluster purity | run audio-s/s (wall) |")
print("|---|---|---|---|---|---|")
mfcc = json.loads(Path("exp/unit_quality_mfcc_k50.json").read_text())["results"][0]
print(f"| (MFCC K=50: the targets) | - | {mfcc['pnmi']:.3f} | {mfcc['phone_purity']:.3f} | {mfcc['cluster_purity']:.3f} | - |")
for fe in ("fbank", "conv"):
    q = json.loads(Path(f"exp/unit_quality_hubert_{fe}_iter1_layer2_k100.json").read_text())["results"][0]
    summary = json.loads(Path(f"exp/hubert_{fe}_iter1/train_summary.json").read_text())
    speed = summary.get("audio_seconds_per_second")
    speed = f"{speed:.1f}" if speed else "n/a"
    print(f"| {fe} | {updates} | {q['pnmi']:.3f} | {q['phone_purity']:.3f} | {q['cluster_purity']:.3f} | {speed} |")
EOF
