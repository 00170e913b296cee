#!/usr/bin/env bash
# Reproduces models/molm3d-small from a clean checkout (after `make setup`). Every stage resumes from
# its last checkpoint, so re-running this script after an interruption continues where it stopped.
# Usage: models/molm3d-small/recipe.sh [DATA_DIR] [RUN_DIR]
set -euo pipefail
DATA=${1:-data/molm3d}
RUN=${2:-runs/small}
CFG=models/molm3d-small/train.toml
M=.venv/bin/molm3d

# All of QM9 (130,831 molecules, DFT geometry + ETKDG conformer, 15 DFT targets) and the c3p ChEBI
# molecules up to 64 heavy atoms (about an hour on 2 cores).
[ -f "$DATA/card.json" ] || $M data build -o "$DATA" --max-heavy-atoms 64 --workers 2

# 0. Supervised 3D pretraining: property heads on the encoder (QM9's DFT targets, RDKit descriptors),
#    DFT and ETKDG geometries alike, with Uni-Mol's masked-atom + denoising loss on a quarter of each batch.
$M train 0 --config $CFG --data "$DATA" --output "$RUN" --steps "${STAGE0_STEPS:-10000}" \
  --set batch_size=64 --set lr=5e-4
# 1. Q-Former: contrastive + hard-negative matching + captioning on ChEBI captions, and the properties
#    regressed from the 8 query outputs (encoder frozen, in eval mode).
$M train 1 --config $CFG --data "$DATA" --output "$RUN" --steps "${STAGE1_STEPS:-600}" --set lr=2e-4
# 2. Captions through the LM: projector + LoRA (the Q-Former stays as stage 1 left it).
$M train 2 --config $CFG --data "$DATA" --output "$RUN" --steps "${STAGE2_STEPS:-100}" --set lr=2e-4
# 3. Instruction tuning on every task, p ~ weight * N ** 0.25 (orbital energies up, the total energy down).
$M train 3 --config $CFG --data "$DATA" --output "$RUN" --steps "${STAGE3_STEPS:-3000}" --set lr=2e-4 \
  --set 'task_weights={homo=2.0, lumo=2.0, gap=2.0, energy=0.25}'
$M export --checkpoint "$RUN/stage3/final" -o "$RUN/molm3d-small" --model-id molm3d-small  # fp16, <= 60 MB

# Baseline (a): the same LM and LoRA, SMILES-only prompts, stage 3's data and mixture.
$M train 3 --config $CFG --data "$DATA" --output "$RUN-smiles" --steps "${BASELINE_STEPS:-${STAGE3_STEPS:-3000}}" \
  --set lr=2e-4 --set 'task_weights={homo=2.0, lumo=2.0, gap=2.0, energy=0.25}' --smiles-only

# Evaluation for the model card (test split): 1,000 examples per property task and 200 per text task,
# both geometries, the property heads, both baselines; the token ablation on HOMO/LUMO/gap; retrieval
# on the whole test set; the caption decodings compared.
mkdir -p "$RUN/eval"
E="$M eval --checkpoint $RUN/stage3/final --data $DATA --batch-size 32"
$E --limit 1000 --text-limit 200 --smiles-only-checkpoint "$RUN-smiles/stage3/final" --tasks homo lumo gap mw logp tpsa \
  complexity energy caption classes identity --json "$RUN/eval/small.json" --markdown "$RUN/eval/small.md"
$E --limit 1000 --tasks homo lumo gap --token-ablation --no-heads --json "$RUN/eval/token-ablation.json"
$E --tasks retrieval --no-rerank --json "$RUN/eval/retrieval-full.json"
$E --tasks caption --decoding-grid --text-limit 200 --max-new-tokens 96 --json "$RUN/eval/decoding-grid.json" \
  --markdown "$RUN/eval/decoding-grid.md"
