#!/usr/bin/env bash
# The paper's own systematicity training script and this project's paper recipe, side by side on the same
# exported directories, the same seeds and the same number of steps; writes OUT/summary.json and
# OUT/summary.md (docs/results.md quotes them).
#
#   bash docs/side_by_side/run.sh PAPER_CODE OUT [SEEDS] [EPOCHS]
#
# PAPER_CODE holds the paper's train_systematicity.py and gpt_utils_systematicity.py
# (OSU-NLP-Group/Loop-Think-Generalize), kept outside this repository; on transformers 5 their
# RecurrentGPT2Block needs two changes (a GPT2Block returns a tensor, not a tuple; GPT2Config drops
# _attn_implementation="eager" given as a keyword): docs/results.md says which. Two runs at a time, one
# thread each.
set -euo pipefail
paper_code=$(realpath "$1"); out=$(realpath -m "$2"); seeds=${3:-"0 1 2"}; epochs=${4:-100}
repo=$(cd "$(dirname "$0")/../.." && pwd); python=${PYTHON:-$repo/.venv/bin/python}
mkdir -p "$out"
export OMP_NUM_THREADS=1
for seed in $seeds; do
  "$python" -m rdt_core.data export --format paper-composition --entities 200 --relations 40 --out-degree 12 \
    --test-queries 40 --val-queries 20 --seed "$seed" --out "$out/data_$seed" > /dev/null
done
batches=$("$python" -c "import json, math, sys; print(math.ceil(len(json.load(open(sys.argv[1]))) / 128))" "$out/data_${seeds%% *}/train.json")
run_pair() {
  local seed=$1
  rm -f "$out/paper_$seed.txt"
  (cd "$paper_code" && "$python" train_systematicity.py --data_dir "$out/data_$seed" --seed "$seed" \
     --checkpoint_dir "$out/paper_ckpt_$seed" --log_file "$out/paper_$seed.txt" --num_epochs "$epochs" \
     --lr 1e-3 --warmup_steps 200 --d_model 64 --num_recurrent_layers 1 --num_heads 4 --recurrence 4 \
     > "$out/paper_$seed.log" 2>&1) &
  (cd "$out" && "$python" -m rdt_core.train "$repo/docs/configs/paper_side_by_side.yaml" --no-mlflow \
     --set data.paper_dir="$out/data_$seed" --set train.seed="$seed" --set data.seed="$seed" \
     --set train.steps=$((epochs * batches)) --set train.eval_every=$((epochs * batches / 10)) \
     --out "$out/ours_$seed.jsonl" > "$out/ours_$seed.log" 2>&1) &
  wait
}
for seed in $seeds; do run_pair "$seed"; done
"$python" "$repo/docs/side_by_side/summarize.py" "$out" "$batches" $seeds
