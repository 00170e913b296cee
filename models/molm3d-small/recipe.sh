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
$M train 0 --config $CFG --data "$DATA" --output "$RUN" --steps "${STAGE0_STEPS:-14000}" \
  --set batch_size=64 --set lr=5e-4 --set save_every=500
# 1. Q-Former: contrastive + hard-negative matching + captioning on ChEBI captions, and the properties
#    regressed from the 8 query outputs (encoder frozen, in eval mode).
$M train 1 --config $CFG --data "$DATA" --output "$RUN" --steps "${STAGE1_STEPS:-300}" --set lr=2e-4
# 2. Captions through the LM: projector + LoRA (the Q-Former stays as stage 1 left it).
$M train 2 --config $CFG --data "$DATA" --output "$RUN" --steps "${STAGE2_STEPS:-50}" --set lr=2e-4
# 3. Instruction tuning on every task, p ~ weight * N ** 0.25 (orbital energies up, the total energy down).
STAGE3=(--steps "${STAGE3_STEPS:-700}" --set lr=2e-4 --set 'task_weights={homo=3.0, lumo=3.0, gap=3.0, energy=0.25}')
# 3b. More instruction tuning from stage 3's final weights, orbital energies weighted 5, fresh optimizer and
#     schedule (the LM learns to read the numbers late: HOMO 0.51 eV at step 250, 0.268 at step 700).
STAGE3B=(--steps "${STAGE3B_STEPS:-1300}" --set lr=1.5e-4 --set save_every=100
         --set 'task_weights={homo=5.0, lumo=5.0, gap=5.0, energy=0.25}')
$M train 3 --config $CFG --data "$DATA" --output "$RUN" "${STAGE3[@]}"
$M train 3 --config $CFG --data "$DATA" --output "$RUN/more" "${STAGE3B[@]}" --set init_checkpoint="$RUN/stage3/final"
$M export --checkpoint "$RUN/more/stage3/final" -o "$RUN/molm3d-small" --model-id molm3d-small  # fp16, <= 60 MB

# Baseline (a): the same LM and LoRA, SMILES-only prompts, the same stage 3 and 3b data, mixtures and
# steps (not yet run for the current checkpoint: see its model card).
$M train 3 --config $CFG --data "$DATA" --output "$RUN-smiles" "${STAGE3[@]}" --smiles-only
$M train 3 --config $CFG --data "$DATA" --output "$RUN-smiles/more" "${STAGE3B[@]}" \
  --set init_checkpoint="$RUN-smiles/stage3/final" --smiles-only

# Evaluation for the model card (test split; what the card reports and how long each took here).
mkdir -p "$RUN/eval"
E="$M eval --checkpoint $RUN/more/stage3/final --data $DATA"
# The property heads (`molm3d predict`) on every test example, DFT geometry and SMILES conformer (no LM).
$E --no-lm --tasks homo lumo gap mw logp tpsa --batch-size 128 --json "$RUN/eval/heads.json" --markdown "$RUN/eval/heads.md"
# The LM's answers (`molm3d ask`) from the SMILES conformer, 1,000 test examples per task; for HOMO also the
# same questions with another molecule's <mol> tokens (token ablation); the training-mean baseline beside.
$E --geometries etkdg --tasks homo --limit 1000 --token-ablation --no-heads --batch-size 64 \
  --max-new-tokens 24 --json "$RUN/eval/lm-homo.json" --markdown "$RUN/eval/lm-homo.md"
$E --geometries etkdg --tasks lumo gap --limit 1000 --no-heads --batch-size 64 \
  --max-new-tokens 24 --json "$RUN/eval/lm-lumo-gap.json" --markdown "$RUN/eval/lm-lumo-gap.md"
# Captions: the decodings compared on the first 100 caption test examples (BLEU/ROUGE/METEOR, 4-gram
# repeats), the default caption decoding (repetition penalty 1.2 over the 4-gram block) on all 1,899, and
# the first 200 with and without the penalty.
$E --tasks caption --decoding-grid --text-limit 100 --max-new-tokens 96 --batch-size 50 \
  --json "$RUN/eval/decoding-grid.json" --markdown "$RUN/eval/decoding-grid.md"
$E --tasks caption --geometries etkdg --max-new-tokens 96 --batch-size 40 \
  --json "$RUN/eval/captions-full.json" --markdown "$RUN/eval/captions-full.md"
$E --tasks caption --geometries etkdg --text-limit 200 --max-new-tokens 96 --batch-size 40 \
  --json "$RUN/eval/captions-200.json" --markdown "$RUN/eval/captions-200.md"
$E --tasks caption --geometries etkdg --text-limit 200 --max-new-tokens 96 --batch-size 40 --repetition-penalty 1 \
  --json "$RUN/eval/captions-200-no-penalty.json" --markdown "$RUN/eval/captions-200-no-penalty.md"
# Retrieval over the whole test set.
$E --tasks retrieval --no-rerank --json "$RUN/eval/retrieval-full.json" --markdown "$RUN/eval/retrieval-full.md"
# The demo molecules with the exported checkpoint and the CLI's default caption decoding.
$M caption examples/molecules.smi --checkpoint "$RUN/molm3d-small" > "$RUN/eval/demo-captions.jsonl"
