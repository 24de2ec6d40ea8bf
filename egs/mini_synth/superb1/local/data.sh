#!/usr/bin/env bash
# Lay out the embedded synthetic corpus as SUPERB task data dirs (offline).
#   local/data.sh [--hours 3] [--seed 0] [--nj 2] [--clean false] [--corpus_dir DIR] [out_dir (default: data)]
# Without --corpus_dir the corpus is built with `speechssl synth` into <out_dir>/corpus
# (~1 min for 3 h on 2 cores); with it, an existing `speechssl synth` output is used as is.
#
#   <out_dir>/pr, asr, sid/{train,dev,test} -> corpus read/{train,dev,test}  (phones, text, utt2spk)
#   <out_dir>/ks/{train,dev,test}           -> corpus keywords/...           (text = keyword class)
#   <out_dir>/ic/{train,dev,test}           -> corpus commands/...           (intent)
#   <out_dir>/sd/{train,dev,test}           -> corpus diar/...               (recordings in wav.scp,
#                                              a turn per segment, utt2spk, reco2dur, rttm)
#   <out_dir>/asv/train -> read/train (the 40 seen speakers train the speaker head)
#   <out_dir>/asv/test  -> asv/test (10 unseen speakers, its trials)
#   <out_dir>/asv/dev   = read/dev + read/test with every pair as a trial: held-out utterances
#                         of seen speakers, used only to pick the checkpoint (never the unseen
#                         test speakers, so the reported EER is not tuned on test)
set -euo pipefail

hours=3         # total hours of audio of a corpus built here
seed=0          # the same seed gives byte-identical files
nj=2            # parallel synthesis processes
clean=false     # true: no noise, gain or speed perturbation
corpus_dir=""   # an existing corpus (`speechssl synth --out DIR`); default: build <out_dir>/corpus

help_message="Usage: $0 [--hours H] [--seed S] [--nj N] [--clean true|false] [--corpus_dir DIR] [out_dir (default: data)]"
. utils/parse_options.sh

if [ $# -gt 1 ]; then
    echo "$help_message" >&2
    exit 2
fi
out_dir="${1:-data}"
mkdir -p "${out_dir}"

if [ -n "${corpus_dir}" ]; then
    if [ ! -f "${corpus_dir}/summary.json" ] || [ ! -d "${corpus_dir}/read/train" ]; then
        echo "$0: --corpus_dir ${corpus_dir} is not a speechssl synth corpus (no summary.json or read/train);" \
             "build one with 'speechssl synth --out DIR' or leave --corpus_dir out" >&2
        exit 2
    fi
else
    corpus_dir="${out_dir}/corpus"
    if [ ! -f "${corpus_dir}/summary.json" ]; then
        clean_opt=""
        [ "${clean}" = true ] && clean_opt="--clean"
        # shellcheck disable=SC2086
        speechssl synth --out "${corpus_dir}" --hours "${hours}" --seed "${seed}" --nj "${nj}" ${clean_opt}
    fi
fi
corpus=$(cd "${corpus_dir}" && pwd)

link_task() {  # link_task TASK SUBSET: <out_dir>/TASK/<split> -> corpus/SUBSET/<split>
    local task="$1" subset="$2" split
    mkdir -p "${out_dir}/${task}"
    for split in train dev test; do
        if [ ! -d "${corpus}/${subset}/${split}" ]; then
            echo "$0: ${corpus}/${subset}/${split} is missing from the corpus" >&2; exit 2
        fi
        ln -sfn "${corpus}/${subset}/${split}" "${out_dir}/${task}/${split}"
    done
}
link_task pr read
link_task asr read
link_task sid read
link_task ks keywords
link_task ic commands
# the task subsets of `speechssl synth` (a corpus built with --subsets base has none of them)
[ -d "${corpus}/diar" ] && link_task sd diar
[ -d "${corpus}/slots" ] && link_task sf slots
for task in mlpr lid; do
    if [ -d "${corpus}/multilingual" ]; then
        link_task "${task}" multilingual
        ln -sfn "${corpus}/multilingual/phones" "${out_dir}/${task}/phones"  # each language's inventory
    fi
done
if [ -d "${corpus}/qbe" ]; then
    ln -sfn "${corpus}/qbe" "${out_dir}/qbe"  # queries/, docs/, ground_truth: `speechssl downstream qbe`
fi

# The label inventories of the corpus (a tiny train split lacks some phones and intents that
# dev/test have; an undeclared unseen label is an error of `speechssl downstream train`).
cut -d' ' -f1 "${corpus}/phones.txt" | LC_ALL=C sort -u > "${out_dir}/pr/labels.txt"
cat "${corpus}"/commands/{train,dev,test}/intent | cut -d' ' -f2- | LC_ALL=C sort -u > "${out_dir}/ic/labels.txt"

# ASV
mkdir -p "${out_dir}/asv"
ln -sfn "${corpus}/read/train" "${out_dir}/asv/train"
if [ ! -f "${corpus}/asv/test/trials" ]; then
    echo "$0: ${corpus}/asv/test/trials is missing from the corpus" >&2; exit 2
fi
ln -sfn "${corpus}/asv/test" "${out_dir}/asv/test"
# every pair of dev utterances as a trial (`speechssl data trials` refuses a list without
# target or nontarget trials: a corpus too small for an EER)
dev="${out_dir}/asv/dev"
speechssl data combine --out "${dev}" "${corpus}/read/dev" "${corpus}/read/test"
speechssl data trials "${dev}"
made=$(for t in pr asr sid ks ic asv sd sf mlpr lid qbe; do [ -e "${out_dir}/${t}" ] && printf '%s ' "${t}"; done)
echo "$0: task data dirs under ${out_dir}: ${made% } (corpus ${corpus})"
