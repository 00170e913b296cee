"""The dataset card: what a build contains, where it came from, and the same as readable Markdown.

Everything in the card except its "build" section (time, workers) is a function of the sources, the
package versions and the build options, so two builds with the same options have equal cards apart
from "build".
"""

from __future__ import annotations

import json
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import rdkit

from molm3d_core.data.chebi import C3P_PIN
from molm3d_core.data.dataset import FORMAT_DESCRIPTION, FORMAT_VERSION, TASKS, MoleculeRow
from molm3d_core.data.properties import PROPERTY_SPECS
from molm3d_core.data.qm9 import QM9_PIN
from molm3d_core.data.questions import PARAPHRASES
from molm3d_core.data.split import SPLITS
from molm3d_core.data.xtb import XTB_PIN

DATASET_NAME = "molm3d-moit"

DESCRIPTION = (
    "A 3D-MoIT-style instruction dataset for 3D molecular language models, built only from packaged "
    "sources: QM9 DFT geometries and orbital energies, ChEBI names, classes and definitions (via c3p), "
    "RDKit 2D descriptors, and RDKit ETKDGv3+MMFF conformers as a second geometry."
)

TEXT_TASKS = {
    "caption": "ChEBI caption: the molecule's name, its most specific classes and their ChEBI definitions",
    "classes": "all ChEBI classes of the molecule among the 343 c3p classes (ancestors included)",
    "identity": "the ChEBI name of the molecule and its most specific classes",
}
SPLIT_METHOD = (
    "Bemis-Murcko scaffold split (RDKit MurckoScaffold, no stereo), per source; scaffold groups heavier than half "
    "the test target go to train first, the rest in a seeded shuffle fill train, valid, test in turn. QM9 counts "
    "molecules; ChEBI counts captioned molecules, so its test split holds the retrieval pairs."
)


def sources(rdkit_version: str, xtb_version: str | None) -> list[dict[str, str]]:
    """Provenance and licences of every input (licence notes marked unverified were not checked here)."""
    items = [
        {
            "name": "QM9",
            "package": QM9_PIN,
            "files": "qm9pack/data/qm9_part{1,2,3}.csv",
            "content": "130,831 molecules: SMILES, B3LYP/6-31G(2df,p) geometries and all 15 DFT targets (QM9_TARGETS)",
            "citation": "Ramakrishnan et al., Quantum chemistry structures and properties of 134 kilo molecules, "
            "Sci. Data 1, 140022 (2014)",
            "licence": "qm9pack: MIT; QM9 data: CC0 on figshare (unverified)",
        },
        {
            "name": "ChEBI (via c3p)",
            "package": C3P_PIN,
            "files": "c3p/programs/*.py (__metadata__ literals, read with ast.literal_eval)",
            "content": "343 ChEBI classes (name, definition, parents); ChEBI-named molecules with class labels",
            "citation": "ChEBI, EMBL-EBI (https://www.ebi.ac.uk/chebi/); c3p by C. Mungall",
            "licence": "ChEBI text: CC BY 4.0; c3p package: licence not stated in its metadata",
        },
        {
            "name": "RDKit",
            "package": f"rdkit=={rdkit_version}",
            "files": "",
            "content": "canonical SMILES, MolWt, Crippen LogP, TPSA, BertzCT, Murcko scaffolds, ETKDGv3+MMFF94",
            "citation": "RDKit: Open-source cheminformatics, https://www.rdkit.org",
            "licence": "BSD-3-Clause",
        },
    ]
    if xtb_version is not None:
        items.append(
            {
                "name": "GFN2-xTB (tblite)",
                "package": XTB_PIN.split("==")[0] + f"=={xtb_version}",
                "files": "",
                "content": "GFN2-xTB HOMO/LUMO on the ETKDG+MMFF conformer of ChEBI molecules",
                "citation": "Bannwarth, Ehlert, Grimme, J. Chem. Theory Comput. 15, 1652 (2019)",
                "licence": "LGPL-3.0-or-later",
            }
        )
    return items


def task_card() -> dict[str, dict[str, Any]]:
    """Per task: description, unit, answer format, decimals (numeric tasks) and every question paraphrase."""
    tasks: dict[str, dict[str, Any]] = {}
    for task in TASKS:
        if task in PROPERTY_SPECS:
            spec = PROPERTY_SPECS[task]
            info = {"description": spec.description, "unit": spec.unit, "answer_format": spec.template}
            info["decimals"] = spec.decimals
        else:
            info = {"description": TEXT_TASKS[task], "unit": None, "answer_format": None}
        tasks[task] = {**info, "paraphrases": list(PARAPHRASES[task])}
    return tasks


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def make_card(
    options: dict[str, Any],
    stats: dict[str, Any],
    molecules: list[MoleculeRow],
    task_counts: dict[str, Counter],
    retrieval_counts: dict[str, int],
    sizes: dict[str, int],
) -> dict[str, Any]:
    """The card of a build, without its "build" section (which the builder adds).

    `stats` holds the reading, dropping and conformer counters of the build; `task_counts` the examples
    per split and task; `retrieval_counts` {"retrieval", "retrieval_available"}; `sizes` bytes per file.
    """
    by_source: dict[str, dict[str, int]] = {}
    geometries: dict[str, Counter] = {}
    for row in molecules:
        counts = by_source.setdefault(row["source"], dict.fromkeys([*SPLITS, "total"], 0))
        counts[row["split"]] += 1
        counts["total"] += 1
        geometries.setdefault(row["source"], Counter()).update(list(row["geometries"]))
    card: dict[str, Any] = {
        "name": DATASET_NAME,
        "format_version": FORMAT_VERSION,
        "description": DESCRIPTION,
        "config": options,
        "sources": sources(rdkit.__version__, _version("tblite") if options.get("xtb") else None),
        "counts": {
            "molecules": by_source,
            "geometries": {src: dict(sorted(g.items())) for src, g in geometries.items()},
            "tasks": {split: {t: c[t] for t in TASKS if c[t]} for split, c in task_counts.items()},
            **retrieval_counts,
        },
        "read": stats["read"],
        "dropped": {src: dict(sorted(c.items())) for src, c in stats["dropped"].items()},
        "conformer_failures": stats["conformer_failures"],
        "conformer_timeouts": stats["conformer_timeouts"],
        "conformer_methods": {src: dict(sorted(c.items())) for src, c in stats["conformer_methods"].items()},
        "tasks": task_card(),
        "split": {
            "method": SPLIT_METHOD,
            "fractions": {"qm9": options["qm9_fractions"], "chebi": options["chebi_fractions"]},
        },
        "files": sizes,
        "size_bytes": sum(sizes.values()),
        "format": FORMAT_DESCRIPTION,
    }
    if options.get("xtb"):
        card["xtb_failures"] = stats["xtb_failures"]
    return card


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(card: dict[str, Any]) -> str:
    """The card as a human-readable README."""
    counts = card["counts"]
    splits = list(counts["tasks"])
    out = [f"# {card['name']}", "", card["description"], ""]

    out += ["## Molecules", ""]
    mol_rows = [[src, *(by[s] for s in splits), by["total"]] for src, by in counts["molecules"].items()]
    out += _table(["source", *splits, "total"], mol_rows)
    geo_rows = [[src, ", ".join(f"{k}: {v}" for k, v in g.items())] for src, g in counts["geometries"].items()]
    out += ["", *_table(["source", "geometries"], geo_rows), ""]

    out += ["## Examples per task and split", ""]
    task_names = sorted({t for by in counts["tasks"].values() for t in by}, key=list(card["tasks"]).index)
    task_rows = [[t, *(counts["tasks"][s].get(t, 0) for s in splits)] for t in task_names]
    task_rows.append(["**total**", *(sum(counts["tasks"][s].values()) for s in splits)])
    out += _table(["task", *splits], task_rows)
    out += ["", f"Retrieval test pairs: {counts['retrieval']} (of {counts['retrieval_available']} available).", ""]

    out += ["## Dropped and degraded molecules", ""]
    for src, reasons in card["dropped"].items():
        text = ", ".join(f"{k}: {v}" for k, v in reasons.items()) or "none"
        out.append(f"- {src}: dropped {text}")
    for src, n in card["conformer_failures"].items():
        effect = "kept with the DFT geometry only" if src == "qm9" else "dropped"
        timeouts = card["conformer_timeouts"][src]
        out.append(f"- {src}: {n} ETKDG conformer failures, {timeouts} of them timeouts ({effect})")
    for src, methods in card["conformer_methods"].items():
        out.append(f"- {src} conformer methods: " + (", ".join(f"{k}: {v}" for k, v in methods.items()) or "none"))
    if "xtb_failures" in card:
        out.append(f"- chebi: {card['xtb_failures']} GFN2-xTB failures (no xtb tasks for them)")

    out += ["", "## Tasks", ""]
    for name, task in card["tasks"].items():
        unit = f" ({task['unit']})" if task.get("unit") else ""
        out += [f"### {name}{unit}", "", task["description"], ""]
        if task.get("answer_format"):
            out += [f"Answer format: `{task['answer_format']}`", ""]
        out += ["Questions:", "", *(f"- {q}" for q in task["paraphrases"]), ""]

    out += ["## Splits", "", card["split"]["method"], ""]
    out += [f"- {src}: fractions (train, valid, test) = {f}" for src, f in card["split"]["fractions"].items()]

    out += ["", "## Files", ""]
    out += _table(["file", "bytes"], [[k, v] for k, v in card["files"].items()])
    out += ["", f"Total: {card['size_bytes']} bytes.", "", "## Format", "", "```", card["format"], "```", ""]

    out += ["## Sources and licences", ""]
    for src in card["sources"]:
        out.append(
            f"- **{src['name']}** (`{src['package']}`): {src['content']}. {src['citation']}. Licence: {src['licence']}."
        )

    build = card["build"]
    out += [
        "",
        "## Build",
        "",
        f"- options: `{json.dumps(card['config'])}`",
        f"- started {build['started_at']}, {build['seconds']:.1f} s with {build['workers']} worker(s)",
        "",
    ]
    return "\n".join(out)
