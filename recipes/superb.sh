#!/usr/bin/env bash
# SUPERB-style downstream evaluation template (ESPnet style). A corpus's run.sh sets
# options and calls this script; every stage is one `speechssl <command>` per item.
#
#   Stage 1: data preparation (local/data.sh)     -> data/<task>/{train,dev,test}
#   Stage 2: tokenizer: a sentencepiece model for ASR (only with --asr_units sentencepiece)
#   Stage 3: train a head for each task x upstream x learning rate -> exp/<task>_<upstream>/[lr_<lr>/]
#            (qbe: no head; `speechssl downstream qbe` scores every layer by DTW)
#            (each run stops when its dev metric stalls for --patience evaluations; dev picks the
#            checkpoint and the rate); a frozen upstream's layers are dumped once per data split into
#            --feature_cache and every head and rate trains from them
#   Stage 4: evaluate each on --eval_split          -> exp/<task>_<upstream>/results_<split>.json
#   Stage 5: report: the SUPERB-style table with the overall score (markdown + JSON), every rate's
#            dev result, PNGs of the learned layer weights and of the dev curves
#
# Upstreams are 'fbank' (SUPERB's FBANK row) or any checkpoint `speechssl downstream`
# loads (speechssl checkpoint dir, transformers dir, fairseq/unilm/s3prl .pt) of any family:
# HuBERT, wav2vec 2.0, WavLM, UniSpeech-SAT, data2vec-audio. Each gets a
# short name (--upstream_names, or derived from its path) that names its experiments
# and, through `downstream train --name`, its column of the report.
#
# Data preparation and each training leave a .done marker, so re-running skips them; delete the
# marker (or the experiment) to redo one. An interrupted training resumes from its checkpoints.
# Stage 4 evaluates again whenever EXP/best.json is newer than its results (a training since).
set -euo pipefail

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') ($(basename "$0"):${BASH_LINENO[0]}) $*"; }

# General options
stage=1                 # first stage to run
stop_stage=100          # last stage to run
ngpu=0                  # GPUs per training: 0 = CPU (or one GPU if visible), >1 = torchrun DDP on one node
nj=1                    # trainings (and evaluations) run at the same time; logs: <exp>.train.log, <exp>/evaluate.log
cmd=local               # where they run: local (this machine) | slurm (one sbatch job each; with --ngpu N
                        # each asks for --gres=gpu:N; see recipes/utils/job_pool.sh)
slurm_opts=""           # sbatch options of every --cmd slurm job, e.g. "--partition gpu --time 4:00:00"
datadir=data            # task data dirs: <datadir>/<task>/{train,dev,test}
expdir=exp              # experiments go here
local_data_opts=""      # options passed to local/data.sh

# Tasks and upstreams
tasks="pr ks ic sid asv"            # any of: pr asr ks ic sid asv sd sf mlpr lid qbe (qbe: no training, every layer scored)
upstreams="fbank"                   # 'fbank' and/or checkpoint paths, space separated
upstream_names=""                   # one short name per upstream (default: 'fbank', else the run dir's name)
downstream_config="conf/{task}.yaml" # per-task DownstreamConfig YAML; {task} is replaced; a missing file is an error
max_steps=""                        # override every config's max_steps (e.g. 20 for a smoke test)
lr_sweep="1e-2 1e-3 1e-4"           # learning rates to sweep (one run each; dev picks the best); "none": the config's lr
patience=""                         # override every config's patience (evaluations without dev improvement; "null": none)
train_args=""                       # extra arguments for `speechssl downstream train`, e.g. "--set seed=2"
feature_cache=""                    # cached upstream features, shared by every task, upstream and rate (one
                                    # entry per upstream weights x data split; tuned upstreams bypass it);
                                    # default <expdir>/feature_cache; "none": every run recomputes the upstream

# ASR units (stage 2)
asr_units=char                      # char | sentencepiece
sentencepiece_vocab_size=300        # soft limit (tiny corpora train with fewer pieces)

# Evaluation and report
eval_split=test                     # split scored by stage 4
report_dir=""                       # default: <expdir>/superb_report

help_message="Usage: $0 [options]; see the option block of recipes/superb.sh"
. "$(dirname "${BASH_SOURCE[0]}")/utils/parse_options.sh"
. "$(dirname "${BASH_SOURCE[0]}")/utils/job_pool.sh"

read -r -a task_list <<< "${tasks}"
read -r -a upstream_list <<< "${upstreams}"
read -r -a name_list <<< "${upstream_names}"
[ -z "${report_dir}" ] && report_dir="${expdir}/superb_report"
[ -z "${feature_cache}" ] && feature_cache="${expdir}/feature_cache"
cache_args=()
[ "${feature_cache}" != none ] && cache_args=(--feature-cache "${feature_cache}")
if [ "${#task_list[@]}" -eq 0 ] || [ "${#upstream_list[@]}" -eq 0 ]; then
    log "Error: --tasks and --upstreams must each name at least one item"; exit 2
fi
for task in "${task_list[@]}"; do
    case "${task}" in
        pr|asr|ks|ic|sid|asv|sd|sf|mlpr|lid|qbe) ;;
        *) log "Error: unknown task '${task}' in --tasks; valid tasks: pr asr ks ic sid asv sd sf mlpr lid qbe"
           exit 2 ;;
    esac
done
if [ "${#name_list[@]}" -gt 0 ] && [ "${#name_list[@]}" -ne "${#upstream_list[@]}" ]; then
    log "Error: --upstream_names has ${#name_list[@]} names for ${#upstream_list[@]} upstreams"; exit 2
fi
case "${asr_units}" in
    char|sentencepiece) ;;
    *) log "Error: --asr_units must be char or sentencepiece, got '${asr_units}'"; exit 2 ;;
esac
if ! [[ "${nj}" =~ ^[1-9][0-9]*$ ]]; then
    log "Error: --nj must be a positive integer, got '${nj}'"; exit 2
fi
job_opts="${slurm_opts}"
if [ "${cmd}" = slurm ] && [ "${ngpu}" -gt 0 ]; then job_opts="${job_opts} --gres=gpu:${ngpu}"; fi
# trainings and evaluations: a pool of --nj jobs, each with its own log (Slurm job scripts in <expdir>/q)
pool_init "${nj}" "${cmd}" "${job_opts}" "${expdir}/q"

run_stage() { [ "${stage}" -le "$1" ] && [ "${stop_stage}" -ge "$1" ]; }

# A short name per upstream: --upstream_names, else the library's default --name
# (`speechssl downstream name`: fbank; .../<run>/checkpoints/<step> -> <run>; else the file stem / dir name).
if [ "${#name_list[@]}" -gt 0 ]; then
    names=("${name_list[@]}")
else
    mapfile -t names < <(speechssl downstream name "${upstream_list[@]}")
fi
if [ "$(printf '%s\n' "${names[@]}" | sort | uniq -d)" != "" ]; then
    log "Error: two upstreams get the same name (${names[*]}); pass --upstream_names"; exit 2
fi

task_config() { echo "${downstream_config//\{task\}/$1}"; }

if [ "${ngpu}" -gt 1 ]; then
    train_cmd=(torchrun --standalone "--nproc_per_node=${ngpu}" -m speechssl downstream train)
else
    train_cmd=(speechssl downstream train)
fi

if run_stage 1; then
    log "Stage 1: data preparation (local/data.sh ${local_data_opts})"
    if [ ! -f "${datadir}/.superb_prep.done" ]; then
        # shellcheck disable=SC2086
        local/data.sh ${local_data_opts}
        touch "${datadir}/.superb_prep.done"
    fi
fi

for task in "${task_list[@]}"; do
    if [ "${task}" = qbe ]; then  # no training: `speechssl downstream qbe` scores every layer in stage 3
        if (run_stage 3) && [ ! -f "${datadir}/qbe/ground_truth" ]; then
            log "Error: ${datadir}/qbe/ground_truth is missing: run stage 1 (local/data.sh) first"; exit 2
        fi
        continue
    fi
    if run_stage 2 || run_stage 3; then
        if [ ! -d "${datadir}/${task}/train" ]; then
            log "Error: ${datadir}/${task}/train is missing: run stage 1 (local/data.sh) first"; exit 2
        fi
        conf=$(task_config "${task}")
        if [ ! -f "${conf}" ]; then
            log "Error: downstream config ${conf} of task ${task} does not exist (--downstream_config)"; exit 2
        fi
    fi
done

asr_args=()
if [ "${asr_units}" = sentencepiece ]; then
    asr_args=(--set asr_units=sentencepiece --set "sentencepiece_vocab_size=${sentencepiece_vocab_size}")
fi
tokenizer_dir="${expdir}/tokenizer_spm${sentencepiece_vocab_size}"
if run_stage 2; then
    if [[ " ${tasks} " == *" asr "* ]] && [ "${asr_units}" = sentencepiece ]; then
        log "Stage 2: sentencepiece model (${sentencepiece_vocab_size} pieces) on ${datadir}/asr/train/text"
        if [ ! -f "${tokenizer_dir}/spm.model" ]; then
            speechssl downstream tokenizer --text "${datadir}/asr/train/text" \
                --vocab-size "${sentencepiece_vocab_size}" --out "${tokenizer_dir}"
        fi
    else
        log "Stage 2: skipped (no asr task with --asr_units sentencepiece)"
    fi
fi

exp_of() { echo "${expdir}/$1_$2"; }

if run_stage 3; then
    for src in "${upstream_list[@]}"; do
        case "${src}" in
            fbank|fbank_no_cmvn|fbank_global_cmvn|tokens:*) ;;  # built-in upstreams
            *) if [ ! -e "${src}" ]; then
                   log "Error: upstream ${src} does not exist (pass a built-in such as 'fbank' or a checkpoint path)"
                   exit 2
               fi ;;
        esac
    done
    sweep_args=()
    if [ -n "${lr_sweep}" ] && [ "${lr_sweep}" != none ]; then  # "1e-3 1e-4" -> lr_sweep=[1e-3, 1e-4]
        read -r -a lrs <<< "${lr_sweep}"
        printf -v lrs_yaml '%s, ' "${lrs[@]}"
        sweep_args=(--set "lr_sweep=[${lrs_yaml%, }]")
    fi
    [ -n "${patience}" ] && sweep_args+=(--set "patience=${patience}")
    steps_args=()
    [ -n "${max_steps}" ] && steps_args=(--max-steps "${max_steps}")
    for task in "${task_list[@]}"; do
        for ((u = 0; u < ${#upstream_list[@]}; u++)); do
            name="${names[$u]}"; exp=$(exp_of "${task}" "${name}")
            [ -f "${exp}/.train.done" ] && continue
            if [ "${task}" = qbe ]; then
                log "Stage 3: qbe on ${name} (every layer) -> ${exp} (log: ${exp}.train.log)"
                pool_run "${exp}.train.log" bash -c '"$@" && touch "'"${exp}"'/.train.done"' _ \
                    speechssl downstream qbe --upstream "${upstream_list[$u]}" --name "${name}" \
                    --data "${datadir}/qbe" --out "${exp}"
                continue
            fi
            # The log stays beside EXP: `downstream train` refuses an EXP holding files it did not write.
            log "Stage 3: train ${task} on ${name} -> ${exp} (log: ${exp}.train.log)"
            mkdir -p "${expdir}"
            extra=()
            if [ "${task}" = asr ]; then
                extra=("${asr_args[@]+"${asr_args[@]}"}")
                if [ -f "${tokenizer_dir}/spm.model" ]; then
                    extra+=(--set "sentencepiece_model=${tokenizer_dir}/spm.model")
                fi
            fi
            resume=(); [ -f "${exp}/downstream.yaml" ] && resume=(--resume)
            # shellcheck disable=SC2086
            pool_run "${exp}.train.log" bash -c '"$@" && touch "'"${exp}"'/.train.done"' _ \
                "${train_cmd[@]}" --task "${task}" --upstream "${upstream_list[$u]}" --name "${name}" \
                --data "${datadir}/${task}" --out "${exp}" \
                --config "$(task_config "${task}")" "${steps_args[@]+"${steps_args[@]}"}" \
                "${sweep_args[@]+"${sweep_args[@]}"}" "${cache_args[@]+"${cache_args[@]}"}" \
                "${extra[@]+"${extra[@]}"}" "${resume[@]+"${resume[@]}"}" ${train_args}
        done
    done
    pool_wait
fi

if run_stage 4; then
    for task in "${task_list[@]}"; do
        for name in "${names[@]}"; do
            exp=$(exp_of "${task}" "${name}")
            [ "${task}" = qbe ] && continue  # scored in stage 3 (no checkpoint to choose)
            # evaluated since the training last ended (train and --resume rewrite best.json)
            [ -f "${exp}/results_${eval_split}.json" ] && [ "${exp}/results_${eval_split}.json" -nt "${exp}/best.json" ] \
                && continue
            if [ ! -f "${exp}/best.json" ]; then
                log "Error: ${exp}/best.json is missing: run stage 3 first"; exit 2
            fi
            log "Stage 4: evaluate ${task} on ${name} (${eval_split}) (log: ${exp}/evaluate.log)"
            pool_run "${exp}/evaluate.log" speechssl downstream evaluate --out "${exp}" --split "${eval_split}"
        done
    done
    pool_wait
fi

if run_stage 5; then
    log "Stage 5: report -> ${report_dir}"
    exps=()
    for task in "${task_list[@]}"; do
        for name in "${names[@]}"; do
            exp=$(exp_of "${task}" "${name}")
            if [ ! -f "${exp}/results_${eval_split}.json" ] && [ ! -f "${exp}/results.json" ]; then
                log "Error: ${exp}/results_${eval_split}.json is missing: run stage 4 first"; exit 2
            fi
            exps+=("${exp}")
        done
    done
    speechssl downstream report --exps "${exps[@]}" --out "${report_dir}" --split "${eval_split}"
    log "Report: ${report_dir}/results.md and results.json$([ -f "${report_dir}/layer_weights.png" ] && echo ", layer_weights.png")$(compgen -G "${report_dir}/dev_curves_*.png" > /dev/null && echo ", dev_curves_<task>.png")"
fi
log "Finished."
