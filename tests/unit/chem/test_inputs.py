"""Reading every input format, including broken records, limits and typed errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import rdDepictor, rdDistGeom

from molm3d_core.chem import (
    InputLimits,
    MoleculeRecord,
    count_records,
    detect_format,
    parse_smiles,
    parse_text,
    read_inputs,
)
from molm3d_core.chem.inputs import PDB_BOND_ORDER_WARNING
from molm3d_core.errors import ErrorCode, MoleculeError

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


def embedded(smiles: str, seed: int = 7) -> Chem.Mol:
    """A molecule with explicit hydrogens and one ETKDG conformer."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = seed
    assert rdDistGeom.EmbedMolecule(mol, params) == 0
    return mol


def molblock(mol: Chem.Mol, title: str, *, v3000: bool = False) -> str:
    mol = Chem.Mol(mol)
    mol.SetProp("_Name", title)
    return Chem.MolToV3KMolBlock(mol) if v3000 else Chem.MolToMolBlock(mol)


def results(inputs: list[str], **kw: object) -> list[MoleculeRecord | MoleculeError]:
    return list(read_inputs(inputs, **kw))  # type: ignore[arg-type]


def as_error(item: MoleculeRecord | MoleculeError) -> MoleculeError:
    assert isinstance(item, MoleculeError), f"expected an error, got record {item!r}"
    return item


def as_record(item: MoleculeRecord | MoleculeError) -> MoleculeRecord:
    assert isinstance(item, MoleculeRecord), f"expected a record, got {item}"
    return item


# --- SMILES -------------------------------------------------------------------------------------


def test_parse_smiles_record_properties() -> None:
    rec = parse_smiles(ASPIRIN, record_id="aspirin")
    assert rec.record_id == "aspirin" and rec.source_format == "smiles"
    assert rec.smiles == Chem.CanonSmiles(ASPIRIN)
    assert rec.inchikey == "BSYNRYMUTXBXSQ-UHFFFAOYSA-N"
    assert rec.num_heavy_atoms == 13
    assert not rec.has_3d and rec.mol.GetNumConformers() == 0 and rec.warnings == []


def test_smiles_errors_carry_rdkit_reasons(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(MoleculeError) as syntax:
        parse_smiles("C1CC(", record_id="bad")
    assert syntax.value.code == ErrorCode.INVALID_SMILES and syntax.value.record_id == "bad"
    assert "SMILES Parse Error: syntax error while parsing: C1CC(" in syntax.value.message

    with pytest.raises(MoleculeError) as valence:
        parse_smiles("C(C)(C)(C)(C)C")
    assert valence.value.code == ErrorCode.SANITIZATION_FAILED
    assert "valence" in valence.value.message.lower() and valence.value.record_id == "C(C)(C)(C)(C)C"

    with pytest.raises(MoleculeError) as aromatic:
        parse_smiles("c1cccc1")
    assert aromatic.value.code == ErrorCode.SANITIZATION_FAILED and "kekulize" in aromatic.value.message

    out, err = capfd.readouterr()
    assert out == "" and err == ""  # handled RDKit errors do not reach stderr


@pytest.mark.parametrize(
    ("smiles", "code", "text"),
    [
        (
            "C" * 300,
            ErrorCode.TOO_MANY_ATOMS,
            "molecule has 300 heavy atoms; the limit is 256",
        ),
        (
            "[Xe]",
            ErrorCode.UNSUPPORTED_ELEMENT,
            "element Xe is not in the encoder's atom dictionary",
        ),
        ("CC[Pt](Cl)[U]", ErrorCode.UNSUPPORTED_ELEMENT, "elements Pt, U are not"),
        ("[H][H]", ErrorCode.EMPTY_MOLECULE, "no heavy atoms"),
        ("", ErrorCode.EMPTY_MOLECULE, "no heavy atoms"),
        ("CCO ethanol", ErrorCode.INVALID_SMILES, "whitespace"),
    ],
)
def test_smiles_rejections(smiles: str, code: ErrorCode, text: str) -> None:
    with pytest.raises(MoleculeError) as err:
        parse_smiles(smiles)
    assert err.value.code == code and text in err.value.message


def test_smiles_length_limit() -> None:
    with pytest.raises(MoleculeError) as err:
        parse_smiles("CCCCCCCCCCCC", limits=InputLimits(max_smiles_length=10))
    assert err.value.code == ErrorCode.INPUT_TOO_LARGE and "12 characters; the limit is 10" in err.value.message
    assert parse_smiles("C" * 10, limits=InputLimits(max_smiles_length=10)).num_heavy_atoms == 10


def test_multi_fragment_smiles_is_allowed_with_a_warning() -> None:
    rec = parse_smiles("CC(=O)[O-].[Na+]")
    assert rec.smiles == "CC(=O)[O-].[Na+]" and rec.num_heavy_atoms == 5
    assert rec.warnings == ["molecule has 2 disconnected fragments; all of them are encoded"]


def test_smiles_file_with_a_bad_line_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "mols.smi"
    path.write_text("SMILES\tname\n# a comment\nCCO ethanol\nC1CC( broken\n\nc1ccccc1\nC1CC(\nCC(=O)O acetic extra\n")
    got = results([str(path)])
    assert len(got) == 5 == count_records([str(path)])
    assert as_record(got[0]).record_id == "ethanol" and got[0].smiles == "CCO"
    broken = as_error(got[1])
    assert broken.record_id == "broken" and broken.code == ErrorCode.INVALID_SMILES
    benzene = as_record(got[2])
    assert benzene.record_id == f"{path}:6" and benzene.smiles == "c1ccccc1"
    assert as_error(got[3]).record_id == f"{path}:7"
    assert as_record(got[4]).record_id == "acetic"


def test_smiles_arguments_and_missing_files() -> None:
    got = results(["CCO ethanol", "CCN", "C1CC(", "missing.sdf"])
    assert as_record(got[0]).record_id == "ethanol"
    assert as_record(got[1]).record_id == "arg2"
    assert as_error(got[2]).record_id == "arg3" and got[2].code == ErrorCode.INVALID_SMILES
    assert as_error(got[3]).code == ErrorCode.INPUT_UNREADABLE and got[3].record_id == "missing.sdf"
    assert count_records(["CCO ethanol", "CCN", "C1CC(", "missing.sdf"]) == 4


# --- formats and whole-file problems ------------------------------------------------------------


_EXTENSION_CASES = [
    ("a.smi", "smiles"),
    ("a.SMILES", "smiles"),
    ("a.txt", "smiles"),
    ("a.sdf", "sdf"),
]
_EXTENSION_CASES += [
    ("a.sd", "sdf"),
    ("a.mol", "mol"),
    ("dir/a.XYZ", "xyz"),
    ("a.pdb", "pdb"),
]


@pytest.mark.parametrize(("name", "fmt"), _EXTENSION_CASES)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(name) == fmt


def test_unsupported_extension_is_one_error_and_reading_goes_on(tmp_path: Path) -> None:
    with pytest.raises(MoleculeError) as err:
        detect_format("mols.csv")
    assert err.value.code == ErrorCode.UNSUPPORTED_FORMAT
    csv = tmp_path / "mols.csv"
    csv.write_text("smiles,name\nCCO,ethanol\n")
    got = results([str(csv), "CCO"])
    assert as_error(got[0]).code == ErrorCode.UNSUPPORTED_FORMAT and got[0].record_id == str(csv)
    assert as_record(got[1]).smiles == "CCO"


def test_file_over_the_byte_limit_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "mols.smi"
    path.write_text("CCO ethanol\nCCN ethylamine\n")
    got = results([str(path), "CCC"], limits=InputLimits(max_input_bytes=10))
    assert len(got) == 2
    assert as_error(got[0]).code == ErrorCode.INPUT_TOO_LARGE and got[0].record_id == str(path)
    assert "the limit is 10" in got[0].message
    assert as_record(got[1]).smiles == "CCC"
    big = list(parse_text("CCO\n" * 10, "smiles", limits=InputLimits(max_input_bytes=10)))
    assert len(big) == 1 and as_error(big[0]).code == ErrorCode.INPUT_TOO_LARGE


def test_unknown_format_name() -> None:
    got = list(parse_text("CCO", "csv"))
    assert len(got) == 1 and as_error(got[0]).code == ErrorCode.UNSUPPORTED_FORMAT


# --- SDF / MOL ----------------------------------------------------------------------------------


CORRUPT_RECORD = """corrupt
     RDKit          3D

  3  2  0  0  0  0  0  0  0  0999 V2000
    0.0000    0.0000    0.0000 C   0  0
this is not an atom line
M  END"""

PENTAVALENT = """pentavalent
     RDKit          2D

  6  5  0  0  0  0  0  0  0  0999 V2000
    0.0000    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    1.0000    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
   -1.0000    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    0.0000    1.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    0.0000   -1.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    0.5000    0.5000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
  1  2  1  0
  1  3  1  0
  1  4  1  0
  1  5  1  0
  1  6  1  0
M  END"""


def test_sdf_v2000_v3000_corrupt_and_untitled_records(tmp_path: Path) -> None:
    ethanol = embedded("CCO")
    benzene = embedded("c1ccccc1")
    flat = Chem.MolFromSmiles("C[C@H](N)O")
    rdDepictor.Compute2DCoords(flat)  # a 2D drawing: stereo from wedges, coordinates dropped
    untitled = molblock(Chem.MolFromSmiles("CCN"), "") + "\n>  <ID>\nmol-42\n"
    blocks = [
        molblock(ethanol, "ethanol"),
        CORRUPT_RECORD,
        molblock(benzene, "benzene", v3000=True),
        PENTAVALENT,
        untitled,
        molblock(flat, ""),
    ]
    path = tmp_path / "mols.sdf"
    path.write_text("\n$$$$\n".join(blocks) + "\n$$$$\n")

    got = results([str(path)])
    assert len(got) == 6 == count_records([str(path)])

    eth = as_record(got[0])
    assert (eth.record_id, eth.source_format, eth.smiles, eth.has_3d) == (
        "ethanol",
        "sdf",
        "CCO",
        True,
    )
    assert eth.mol.GetNumAtoms() == 9  # explicit hydrogens kept
    np.testing.assert_allclose(
        eth.mol.GetConformer().GetPositions(),
        ethanol.GetConformer().GetPositions(),
        atol=1e-4,
    )

    bad = as_error(got[1])
    assert bad.record_id == "corrupt" and bad.code == ErrorCode.PARSE_ERROR and bad.message

    benz = as_record(got[2])
    assert benz.record_id == "benzene" and benz.smiles == "c1ccccc1" and benz.has_3d
    np.testing.assert_allclose(
        benz.mol.GetConformer().GetPositions(),
        benzene.GetConformer().GetPositions(),
        atol=1e-4,
    )

    valence = as_error(got[3])
    assert valence.record_id == "pentavalent" and valence.code == ErrorCode.SANITIZATION_FAILED
    assert "valence" in valence.message.lower()

    assert as_record(got[4]).record_id == "mol-42"

    drawing = as_record(got[5])
    assert drawing.record_id == f"{path}#6" and not drawing.has_3d
    assert drawing.mol.GetNumConformers() == 0 and drawing.smiles == "C[C@H](N)O"
    assert "2D" in drawing.warnings[0]


@pytest.mark.parametrize("v3000", [False, True])
def test_nan_coordinate_is_a_parse_error_in_both_molfile_versions(v3000: bool) -> None:
    lines = molblock(embedded("CCO"), "broken", v3000=v3000).splitlines()
    if v3000:  # "M  V30 1 C x y z 0": the first atom's x
        i = next(i for i, line in enumerate(lines) if line.startswith("M  V30 1 "))
        fields = lines[i].split()
        fields[4] = "nan"
        lines[i] = "M  V30 " + " ".join(fields[2:])
    else:  # the first atom line's x field (10 characters)
        lines[4] = "       nan" + lines[4][10:]
    (got,) = parse_text("\n".join(lines) + "\n$$$$\n", "sdf")
    err = as_error(got)
    # V3000 used to be accepted, its conformer silently regenerated
    assert (err.record_id, err.code) == ("broken", ErrorCode.PARSE_ERROR)


def test_mol_file(tmp_path: Path) -> None:
    path = tmp_path / "aspirin.mol"
    path.write_text(molblock(embedded(ASPIRIN), "aspirin"))
    untitled = tmp_path / "x.mol"
    untitled.write_text(molblock(embedded("CCO"), ""))
    got = results([str(path), str(untitled)])
    rec = as_record(got[0])
    assert (rec.record_id, rec.source_format, rec.has_3d) == ("aspirin", "mol", True)
    assert rec.smiles == Chem.CanonSmiles(ASPIRIN) and rec.mol.GetNumAtoms() == 21
    assert as_record(got[1]).record_id == str(untitled)


# --- XYZ ----------------------------------------------------------------------------------------


def xyz_frame(mol: Chem.Mol, comment: str) -> str:
    lines = [str(mol.GetNumAtoms()), comment]
    for atom, (x, y, z) in zip(mol.GetAtoms(), mol.GetConformer().GetPositions(), strict=True):
        lines.append(f"{atom.GetSymbol()} {x:.6f} {y:.6f} {z:.6f}")
    return "\n".join(lines) + "\n"


def test_multi_frame_xyz(tmp_path: Path) -> None:
    water, methanol = embedded("O"), embedded("CO")
    path = tmp_path / "frames.xyz"
    path.write_text(xyz_frame(water, "water") + "\n" + xyz_frame(methanol, "") + "3\ntruncated\nO 0 0 0\n")
    got = results([str(path)])
    assert len(got) == 3 == count_records([str(path)])
    w = as_record(got[0])
    assert (w.record_id, w.source_format, w.smiles, w.has_3d) == (
        "water",
        "xyz",
        "O",
        True,
    )
    m = as_record(got[1])
    assert m.record_id == f"{path}#2" and m.smiles == "CO"
    np.testing.assert_allclose(
        m.mol.GetConformer().GetPositions(),
        methanol.GetConformer().GetPositions(),
        atol=1e-5,
    )
    trunc = as_error(got[2])
    assert trunc.record_id == "truncated" and trunc.code == ErrorCode.PARSE_ERROR
    assert "3 atom lines expected, 1 found" in trunc.message


def test_xyz_charge_option(tmp_path: Path) -> None:
    path = tmp_path / "ammonium.xyz"
    path.write_text(xyz_frame(embedded("[NH4+]"), "ammonium"))
    neutral = as_error(results([str(path)])[0])
    assert neutral.code == ErrorCode.PARSE_ERROR and neutral.record_id == "ammonium"
    assert "charge" in neutral.message
    charged = as_record(results([str(path)], xyz_charge=1)[0])
    assert charged.smiles == "[NH4+]"


def test_xyz_bad_count_line_and_unsupported_element() -> None:
    got = list(parse_text("2\nxenon pair\nXe 0 0 0\nXe 0 0 4\nnot-a-count\n", "xyz", record_id="x.xyz"))
    assert len(got) == 2
    assert as_error(got[0]).code == ErrorCode.UNSUPPORTED_ELEMENT and got[0].record_id == "xenon pair"
    assert "Xe" in got[0].message
    assert as_error(got[1]).code == ErrorCode.PARSE_ERROR and got[1].record_id == "x.xyz:5"


# --- PDB ----------------------------------------------------------------------------------------


def pdb_lines(
    mol: Chem.Mol,
    resname: str,
    resnum: int,
    *,
    hetero: bool = True,
    conect: bool = False,
) -> list[str]:
    mol = Chem.Mol(mol)
    for atom in mol.GetAtoms():
        info = Chem.AtomPDBResidueInfo()
        info.SetResidueName(resname)
        info.SetResidueNumber(resnum)
        info.SetChainId("A")
        info.SetIsHeteroAtom(hetero)
        info.SetName(f"{atom.GetSymbol()}{atom.GetIdx() + 1}".ljust(4)[:4])
        atom.SetMonomerInfo(info)
    keep = ("HETATM", "ATOM", "CONECT") if conect else ("HETATM", "ATOM")
    return [line for line in Chem.MolToPDBBlock(mol).splitlines() if line.startswith(keep)]


def renumber(lines: list[str], start: int) -> list[str]:
    """Shift atom serials (and CONECT references) so several blocks can share one file."""
    out = []
    for line in lines:
        if line.startswith("CONECT"):
            fields = [int(line[i : i + 5]) + start for i in range(6, len(line), 5) if line[i : i + 5].strip()]
            out.append("CONECT" + "".join(f"{f:5d}" for f in fields))
        else:
            out.append(f"{line[:6]}{int(line[6:11]) + start:5d}{line[11:]}")
    return out


def test_pdb_ligands_water_ions_and_protein(tmp_path: Path) -> None:
    peptide = embedded("NCC(=O)N[C@@H](C)C(=O)O")
    protein = pdb_lines(Chem.RemoveHs(peptide), "GLY", 1, hetero=False)
    with_h = renumber(pdb_lines(embedded(ASPIRIN), "AIN", 401), 100)  # H present, no CONECT
    conect = renumber(pdb_lines(Chem.RemoveHs(embedded(ASPIRIN)), "AIC", 402, conect=True), 200)
    bare = renumber(pdb_lines(Chem.RemoveHs(embedded("OCCO")), "EDO", 403), 300)  # no H, no CONECT
    water = renumber(pdb_lines(embedded("O"), "HOH", 501), 400)
    ion = renumber(pdb_lines(Chem.MolFromSmiles("[Na+]"), "NA", 601), 500)
    path = tmp_path / "complex.pdb"
    path.write_text("\n".join([*protein, "TER", *with_h, *water, *ion, *conect, *bare, "END"]) + "\n")

    got = results([str(path)])
    assert [r.record_id for r in got] == [
        f"{path}:A:AIN401",
        f"{path}:A:AIC402",
        f"{path}:A:EDO403",
    ]
    assert count_records([str(path)]) == 3
    perceived, from_conect, bare_rec = (as_record(r) for r in got)
    assert perceived.smiles == Chem.CanonSmiles(ASPIRIN) and perceived.warnings == []
    assert perceived.has_3d and perceived.source_format == "pdb"
    assert perceived.mol.GetNumAtoms() == 21  # hydrogens kept
    assert from_conect.smiles == Chem.CanonSmiles(ASPIRIN) and from_conect.warnings == []
    assert bare_rec.smiles == "OCCO" and bare_rec.warnings == [PDB_BOND_ORDER_WARNING]


def test_pdb_without_hetatm_is_one_molecule_of_atom_records(tmp_path: Path) -> None:
    peptide = Chem.AddHs(Chem.MolFromSequence("GA"))  # standard residue and atom names
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = 7
    assert rdDistGeom.EmbedMolecule(peptide, params) == 0
    path = tmp_path / "peptide.pdb"
    atoms = [line for line in Chem.MolToPDBBlock(Chem.RemoveHs(peptide)).splitlines() if line.startswith("ATOM")]
    assert len(atoms) == 10
    path.write_text("\n".join(atoms) + "\nEND\n")
    (rec,) = results([str(path)])
    rec = as_record(rec)
    assert rec.record_id == str(path) and rec.has_3d and rec.warnings == []
    # bond orders from RDKit's residue templates; L-alanine's configuration from the coordinates
    assert rec.smiles == Chem.MolToSmiles(Chem.MolFromSequence("GA")) == "C[C@H](NC(=O)CN)C(=O)O"


def test_pdb_with_only_water_is_empty() -> None:
    lines = pdb_lines(embedded("O"), "HOH", 1)
    (err,) = parse_text("\n".join(lines), "pdb", record_id="w.pdb")
    assert as_error(err).code == ErrorCode.EMPTY_MOLECULE and err.record_id == "w.pdb"


def test_count_matches_read_for_mixed_inputs(tmp_path: Path) -> None:
    smi = tmp_path / "a.smi"
    smi.write_text("CCO a\nC1CC( b\n\nCCN\n")
    sdf = tmp_path / "b.sdf"
    sdf.write_text(molblock(embedded("CCO"), "x") + "\n$$$$\n" + CORRUPT_RECORD + "\n$$$$\n")
    inputs = [str(smi), str(sdf), "CCC", "nope.pdb", str(tmp_path / "c.csv")]
    assert count_records(inputs) == len(results(inputs)) == 8


def test_split_text_cuts_a_text_as_read_inputs_cuts_its_file(tmp_path: Path) -> None:
    """The bulk path (`split_text` of an upload, parsed later by a worker) and `read_inputs` of the same
    file see the same records, ids and errors."""
    from molm3d_core.chem.inputs import RawRecord, split_inputs, split_text

    text = molblock(embedded("CCO"), "ethanol") + "\n$$$$\n" + CORRUPT_RECORD + "\n$$$$\n"
    text += molblock(embedded("CCN"), "") + "\n$$$$\n"
    path = tmp_path / "three.sdf"
    path.write_text(text)
    raws = list(split_text(text, "sdf", str(path)))
    assert raws == list(split_inputs([str(path)]))
    assert [(r.record_id, r.fmt) for r in raws] == [("ethanol", "sdf"), ("corrupt", "sdf"), (f"{path}#3", "sdf")]
    parsed = [item for raw in raws for item in parse_text(raw.text, raw.fmt, record_id=raw.record_id)]
    from_file = results([str(path)])
    assert [type(p) for p in parsed] == [type(f) for f in from_file] == [MoleculeRecord, MoleculeError, MoleculeRecord]
    outcome = lambda r: r.smiles if isinstance(r, MoleculeRecord) else r.code  # noqa: E731
    assert [outcome(p) for p in parsed] == [outcome(f) for f in from_file]
    # a broken XYZ frame and an unknown format are errors in the stream, not exceptions
    (frame, broken) = split_text("1\nfirst\nC 0 0 0\nx\n", "xyz", "m.xyz")
    assert isinstance(frame, RawRecord) and as_error(broken).code == ErrorCode.PARSE_ERROR
    (unknown,) = split_text("CCO", "csv", "a.csv")
    assert as_error(unknown).code == ErrorCode.UNSUPPORTED_FORMAT and unknown.record_id == "a.csv"
