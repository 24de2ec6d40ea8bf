#!/usr/bin/env bash
# Compression template (ESPnet style): distil and prune a teacher, compare the models,
# evaluate them with the SUPERB recipe, export them. A corpus's run.sh sets options.
#
#   Stage 1: DistilHuBERT distillation       -> exp/distill/final
#   Stage 2: DPHuBERT structured pruning     -> exp/prune/final (+ prune_summary.json)
#   Stage 3: parameters, MACs and CPU time of teacher vs distilled vs pruned -> exp/compare.md
#   Stage 4: SUPERB evaluation of the three  (the recipe in --superb_dir)
#   Stage 5: export both models (--export_formats, ONNX and TorchScript by default)
#
# Each finished step leaves a .done marker, so re-running skips it.
set -euo pipefail

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') ($(basename "$0"):${BASH_LINENO[0]}) $*"; }

stage=1                  # first stage to run
stop_stage=100           # last stage to run
teacher=""               # any load_upstream source (speechssl checkpoint, transformers dir, fairseq/s3prl .pt)
train_set=""             # training data dir (audio only is needed: the teacher gives the targets)
valid_set=""             # validation data dir (optional)
expdir=exp               # experiments go here
distill_config=conf/distill.yaml
prune_config=conf/prune.yaml
target_sparsity=0.75     # fraction of the teacher's parameters pruning removes
distill_args=""          # extra arguments for `speechssl distill`, e.g. "--max-steps 100"
prune_args=""            # extra arguments for `speechssl prune`, e.g. "--max-steps 100 --final-distill-steps 10"
superb_dir=""            # a SUPERB recipe dir (with run.sh) to evaluate the three models; empty: skip stage 4
superb_args=""           # extra arguments for that run.sh
cmd=local                # where stage 4's SUPERB jobs run: local | slurm (passed on as its --cmd)
slurm_opts=""            # sbatch options of those jobs (--cmd slurm)
compare_seconds=10       # utterance length of stage 3's timing
export_formats="onnx torchscript"  # stage 5, for both models (hf/s3prl/fairseq: conv frontend, equal layers only)

help_message="Usage: $0 --teacher SRC --train_set DIR [options]; see the option block of recipes/compress.sh"
. "$(dirname "${BASH_SOURCE[0]}")/utils/parse_options.sh"

run_stage() { [ "${stage}" -le "$1" ] && [ "${stop_stage}" -ge "$1" ]; }
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$(pwd)/$1" ;; esac; }
if [ -z "${teacher}" ] || [ -z "${train_set}" ]; then
    log "Error: --teacher and --train_set are required"; exit 2
fi
if ! [ -e "${teacher}" ]; then
    log "Error: teacher ${teacher} does not exist (train one with the ssl1 recipe first)"; exit 2
fi
valid_arg=""; [ -n "${valid_set}" ] && valid_arg="--valid ${valid_set}"
distilled="${expdir}/distill/final"
pruned="${expdir}/prune/final"

if run_stage 1; then
    log "Stage 1: distillation of ${teacher} -> ${distilled}"
    if ! [ -f "${expdir}/distill/.done" ]; then
        # shellcheck disable=SC2086
        speechssl distill --teacher "${teacher}" --config "${distill_config}" --train "${train_set}" ${valid_arg} \
            --out "${expdir}/distill" ${distill_args}
        touch "${expdir}/distill/.done"
    fi
fi

if run_stage 2; then
    log "Stage 2: structured pruning of ${teacher} to sparsity ${target_sparsity} -> ${pruned}"
    if ! [ -f "${expdir}/prune/.done" ]; then
        # shellcheck disable=SC2086
        speechssl prune --teacher "${teacher}" --config "${prune_config}" --train "${train_set}" ${valid_arg} \
            --out "${expdir}/prune" --target-sparsity "${target_sparsity}" ${prune_args}
        touch "${expdir}/prune/.done"
    fi
fi

if run_stage 3; then
    log "Stage 3: teacher vs distilled vs pruned (parameters, MACs, CPU time)"
    speechssl compare --upstreams "teacher=${teacher}" "distilled=${distilled}" "pruned=${pruned}" \
        --seconds "${compare_seconds}" --out "${expdir}/compare.md"
fi

if run_stage 4; then
    if [ -n "${superb_dir}" ]; then
        log "Stage 4: SUPERB evaluation in ${superb_dir}"
        models="$(absolute "${teacher}") $(absolute "${distilled}") $(absolute "${pruned}")"
        # shellcheck disable=SC2086
        (cd "${superb_dir}" && ./run.sh --upstreams "${models}" \
            --upstream_names "teacher distilled pruned" --cmd "${cmd}" --slurm_opts "${slurm_opts}" ${superb_args})
    else
        log "Stage 4: skipped (no --superb_dir)"
    fi
fi

if run_stage 5; then
    log "Stage 5: export (${export_formats})"
    for name in distilled pruned; do
        src="${expdir}/distill/final"; [ "${name}" = pruned ] && src="${pruned}"
        for fmt in ${export_formats}; do
            case "${fmt}" in
                hf) out="${expdir}/export/${name}_hf" ;;
                onnx) out="${expdir}/export/${name}.onnx" ;;
                *) out="${expdir}/export/${name}_${fmt}.pt" ;;
            esac
            speechssl export --upstream "${src}" --format "${fmt}" --out "${out}"
        done
    done
fi
log "Finished."
