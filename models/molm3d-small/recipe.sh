#!/usr/bin/env bash
# Reproduces models/molm3d-small from a clean checkout (after `make setup`). Every stage resumes from
# its last checkpoint, so re-running this script after an interruption continues where it stopped.
# Usage: models/molm3d-small/recipe.sh [DATA_DIR] [RUN_DIR]
set -euo pipefail
DATA=${1:-data/molm3d}
RUN=${2:-runs/small}
CFG=models/molm3d-small/train.toml
M=.venv/bin/molm3d

[ -f "$DATA/card.json" ] || $M data build -o "$DATA" --limit 20000 --max-heavy-atoms 64 --workers 2

$M train 0 --config $CFG --data "$DATA" --output "$RUN" --steps 1500   # Uni-Mol pretraining
$M train 1 --config $CFG --data "$DATA" --output "$RUN" --steps 200 --set lr=3e-4  # Q-Former: ITC + ITM + captioning
$M train 2 --config $CFG --data "$DATA" --output "$RUN" --steps 60     # captions through the LM (LoRA)
$M train 3 --config $CFG --data "$DATA" --output "$RUN" --steps 800    # instruction tuning, all tasks
# Baseline (a): the same LM and LoRA, same number of LM samples (stages 2+3), SMILES-only prompts.
$M train 3 --config $CFG --data "$DATA" --output "$RUN-smiles" --steps 860 --smiles-only
