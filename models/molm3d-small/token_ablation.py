"""Do the answers depend on the molecule tokens? Property MAE with each molecule's own 3D tokens vs
with the tokens of the next molecule in the batch (the SMILES in the prompt stays the right one).

    .venv/bin/python models/molm3d-small/token_ablation.py --checkpoint DIR --data DIR [--limit 100]

Equal MAEs (and identical answers) mean the LM answers from the SMILES alone.
"""

from __future__ import annotations

import argparse
import json

import torch

from molm3d_core.checkpoints import load_model
from molm3d_core.chem import collate
from molm3d_core.data.dataset import load_dataset
from molm3d_core.data.features import has_geometry, molecule_features
from molm3d_core.evaluation.properties import property_mae
from molm3d_core.models import DecodingOptions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--tasks", nargs="+", default=["homo", "lumo", "gap"])
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    model, _ = load_model(args.checkpoint, device="cpu", dtype="float32")
    dataset = load_dataset(args.data)
    decoding = DecodingOptions(max_new_tokens=32)
    results = {}
    for task in args.tasks:
        examples = [(m, r) for m, r in dataset.examples("test") if r["task"] == task and has_geometry(m, "dft")]
        examples = examples[: args.limit]
        own, other = [], []
        for start in range(0, len(examples), args.batch_size):
            chunk = examples[start : start + args.batch_size]
            smiles, questions = [m["smiles"] for m, _ in chunk], [r["instruction"] for _, r in chunk]
            features = [molecule_features(m, "dft", model.config.max_atoms) for m, _ in chunk]
            with torch.no_grad():
                own += [g.text for g in model.generate(collate(features), smiles, questions, decoding)]
                rolled = features[1:] + features[:1]
                other += [g.text for g in model.generate(collate(rolled), smiles, questions, decoding)]
        labels = [r["label"] for _, r in examples]
        results[task] = {
            "n": len(examples),
            "mae_own_tokens": property_mae(task, own, labels).mae,
            "mae_other_molecules_tokens": property_mae(task, other, labels).mae,
            "identical_answers": sum(a == b for a, b in zip(own, other, strict=True)),
        }
        print(json.dumps({task: results[task]}), flush=True)


if __name__ == "__main__":
    main()
