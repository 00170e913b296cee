"""Read molecules from SMILES, SDF/MOL, XYZ and PDB into sanitised RDKit molecules.

Readers are generators of `MoleculeRecord | MoleculeError`: a bad record becomes an error naming the
record and the reason (RDKit's own text where RDKit gave one) and reading goes on. Every molecule is
checked here against the encoder's atom dictionary and the size limits, so bad input is rejected before
any model work.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import rdDetermineBonds

from molm3d_core.chem.featurize import unknown_element_message, unknown_elements
from molm3d_core.errors import ErrorCode, MoleculeError

FORMATS = ("smiles", "sdf", "mol", "xyz", "pdb")
_EXTENSIONS = {
    ".smi": "smiles",
    ".smiles": "smiles",
    ".txt": "smiles",
    ".sdf": "sdf",
    ".sd": "sdf",
    ".mol": "mol",
    ".xyz": "xyz",
    ".pdb": "pdb",
}
PDB_BOND_ORDER_WARNING = "bond orders not determined from PDB; SMILES/InChIKey reflect connectivity only"
_WATER = frozenset({"HOH", "WAT", "DOD", "H2O"})
_LOG_TIMESTAMP = re.compile(r"^\[\d{2}:\d{2}:\d{2}\] ?")
# The parts of an RDKit invariant violation that name RDKit's build and this machine: the source file
# and expression, the C++ stack trace with library paths, and the frame lines around them.
_RDKIT_INTERNALS = re.compile(r"^(\*+|-+|Stacktrace:|Violation occurred on line .*|Failed Expression: .*|\s*\d+# .*)$")
_SDF_ID_FIELD = re.compile(r"^>.*<(id|ID|_Name)>")


@dataclass(frozen=True)
class InputLimits:
    """Size limits applied while reading, so oversized input fails early and cheaply."""

    max_heavy_atoms: int = 256
    max_input_bytes: int = 50_000_000  # one whole file or text
    max_smiles_length: int = 2_000  # characters


DEFAULT_LIMITS = InputLimits()


@dataclass
class MoleculeRecord:
    """One sanitised input molecule.

    `mol` keeps explicit hydrogens when the input had them and its conformer only when the input
    carried real 3D coordinates (`has_3d`); 2D drawings are dropped so they are never mistaken for 3D.
    """

    record_id: str  # title / id column / "file:line" / "file#index" / "file:chain:RESnum" / "argN"
    mol: Chem.Mol
    source_format: str  # one of FORMATS
    has_3d: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def smiles(self) -> str:
        """Canonical SMILES without explicit hydrogens."""
        with rdkit_log():
            return Chem.MolToSmiles(Chem.RemoveHs(self.mol))

    @property
    def inchikey(self) -> str | None:
        """Standard InChIKey, or None where RDKit cannot compute one."""
        try:
            with rdkit_log():
                key = Chem.MolToInchiKey(self.mol)
        except (RuntimeError, ValueError):
            return None
        return key or None

    @property
    def num_heavy_atoms(self) -> int:
        """Atoms other than hydrogen."""
        return sum(1 for a in self.mol.GetAtoms() if a.GetAtomicNum() != 1)


@dataclass
class _Log:
    text: str = ""


@contextmanager
def rdkit_log() -> Iterator[_Log]:
    """Keep RDKit off stderr; `.text` holds its error messages (timestamps stripped) after the block."""
    log = _Log()
    with rdBase.BlockLogs(), rdBase.CaptureErrorLog() as capture:
        try:
            yield log
        finally:
            log.text = rdkit_message(capture.messages)


def rdkit_message(text: str) -> str:
    """RDKit's error text without timestamps and without an invariant violation's source location and
    stack trace (file paths of RDKit's build and of this machine): what a user may be shown."""
    lines = (_LOG_TIMESTAMP.sub("", line).rstrip() for line in text.splitlines())
    return "\n".join(line for line in lines if line and not _RDKIT_INTERNALS.match(line))


_RDKIT_ERRORS = (Chem.MolSanitizeException, RuntimeError, ValueError)


def _rdkit_parse(parse: Callable[[bool], Chem.Mol | None], code: ErrorCode, what: str) -> Chem.Mol:
    """Parse with sanitisation; on failure tell a syntax error (`code`) from a chemistry error."""
    with rdkit_log() as log:
        mol = parse(True)
    if mol is not None:
        return mol
    with rdkit_log():
        raw = parse(False)
    if raw is not None:
        try:
            with rdkit_log():
                Chem.SanitizeMol(raw)
        except _RDKIT_ERRORS as exc:
            raise MoleculeError(ErrorCode.SANITIZATION_FAILED, rdkit_message(str(exc))) from None
    raise MoleculeError(code, log.text or f"RDKit could not read the {what}")


def _check_atoms(mol: Chem.Mol, limits: InputLimits) -> None:
    """Reject molecules the encoder cannot take: no heavy atoms, unknown elements, too many atoms."""
    heavy = sum(1 for a in mol.GetAtoms() if a.GetAtomicNum() != 1)
    if heavy == 0:
        raise MoleculeError(ErrorCode.EMPTY_MOLECULE, "molecule has no heavy atoms")
    missing = unknown_elements([a.GetSymbol() for a in mol.GetAtoms()])
    if missing:
        raise MoleculeError(ErrorCode.UNSUPPORTED_ELEMENT, unknown_element_message(missing))
    if heavy > limits.max_heavy_atoms:
        raise MoleculeError(
            ErrorCode.TOO_MANY_ATOMS,
            f"molecule has {heavy} heavy atoms; the limit is {limits.max_heavy_atoms}",
        )


def _make_record(
    mol: Chem.Mol, record_id: str, fmt: str, limits: InputLimits, *, has_3d: bool, warnings: list[str]
) -> MoleculeRecord:
    _check_atoms(mol, limits)
    # RDKit reads "nan" in a V3000 block (V2000 rejects it): a broken record, not a 2D drawing to redo.
    if mol.GetNumConformers() and not np.isfinite(mol.GetConformer().GetPositions()).all():
        raise MoleculeError(ErrorCode.PARSE_ERROR, "coordinates contain NaN or infinite values")
    if not has_3d:
        mol.RemoveAllConformers()
    fragments = len(Chem.GetMolFrags(mol))
    if fragments > 1:
        warnings.append(f"molecule has {fragments} disconnected fragments; all of them are encoded")
    mol.SetProp("_Name", record_id)
    return MoleculeRecord(record_id, mol, fmt, has_3d, warnings)


def coordinates_are_3d(mol: Chem.Mol) -> bool:
    """True when `mol` has a conformer RDKit flags 3D (header or non-zero z) that is not a placeholder.

    Placeholder coordinates (all atoms at one point) are not 3D.
    """
    if mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
        return False
    positions = mol.GetConformer().GetPositions()
    return bool(np.ptp(positions, axis=0).max() > 1e-4)


def detect_format(path: str) -> str:
    """Input format from the file extension (case-insensitive); raises UNSUPPORTED_FORMAT."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        known = ", ".join(_EXTENSIONS)
        raise MoleculeError(
            ErrorCode.UNSUPPORTED_FORMAT, f"unsupported file extension {ext or '(none)'!r}; use {known}", path
        )
    return _EXTENSIONS[ext]


def parse_smiles(smiles: str, *, record_id: str | None = None, limits: InputLimits = DEFAULT_LIMITS) -> MoleculeRecord:
    """Parse one SMILES string (no name part); raises MoleculeError. The id defaults to the SMILES."""
    smiles = smiles.strip()
    rid = record_id or smiles
    try:
        if len(smiles) > limits.max_smiles_length:
            raise MoleculeError(
                ErrorCode.INPUT_TOO_LARGE,
                f"SMILES has {len(smiles)} characters; the limit is {limits.max_smiles_length}",
            )
        if any(c.isspace() for c in smiles):
            raise MoleculeError(ErrorCode.INVALID_SMILES, "SMILES contains whitespace")
        mol = _rdkit_parse(lambda s: Chem.MolFromSmiles(smiles, sanitize=s), ErrorCode.INVALID_SMILES, "SMILES")
        return _make_record(mol, rid, "smiles", limits, has_3d=False, warnings=[])
    except MoleculeError as exc:
        raise exc.with_record(rid) from None


@dataclass
class _Chunk:
    """One record's text, cut out of an input before parsing."""

    record_id: str
    text: str


_Item = _Chunk | MoleculeError


def _split_smiles(text: str, source: str) -> Iterator[_Item]:
    """One record per line "SMILES [id ...]"; blank lines, "#" comments and "smiles ..." headers skipped."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#") or tokens[0].lower() == "smiles":
            continue
        yield _Chunk(tokens[1] if len(tokens) > 1 else f"{source}:{lineno}", tokens[0])


def _split_sdf(text: str, source: str) -> Iterator[_Item]:
    """Records between "$$$$" lines, cut here so that one broken record cannot hide the next."""
    index, lines = 0, []
    for line in [*text.splitlines(), "$$$$"]:
        if line.rstrip() != "$$$$":
            lines.append(line)
            continue
        if any(x.strip() for x in lines):
            index += 1
            yield _Chunk(_molblock_title(lines) or f"{source}#{index}", "\n".join(lines))
        lines = []


def _molblock_title(lines: list[str]) -> str | None:
    """The title line, else an SD data field named id/ID/_Name."""
    if lines and lines[0].strip():
        return lines[0].strip()
    for i in range(len(lines) - 1):
        if _SDF_ID_FIELD.match(lines[i]) and lines[i + 1].strip():
            return lines[i + 1].strip()
    return None


def _split_mol(text: str, source: str) -> Iterator[_Item]:
    yield _Chunk(_molblock_title(text.splitlines()) or source, text)


def _split_xyz(text: str, source: str) -> Iterator[_Item]:
    """Frames of "count / comment / count atom lines"; a broken frame ends the file (framing is lost)."""
    lines, i, index = text.splitlines(), 0, 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        index += 1
        head = lines[i].split()
        if not head[0].isdigit():
            yield MoleculeError(
                ErrorCode.PARSE_ERROR,
                f"expected an atom count, got {lines[i].strip()!r}",
                f"{source}:{i + 1}",
            )
            return
        count = int(head[0])
        comment = lines[i + 1].strip() if i + 1 < len(lines) else ""
        record_id = comment or f"{source}#{index}"
        if i + 2 + count > len(lines):
            found = max(len(lines) - i - 2, 0)
            yield MoleculeError(
                ErrorCode.PARSE_ERROR,
                f"frame truncated: {count} atom lines expected, {found} found",
                record_id,
            )
            return
        yield _Chunk(record_id, "\n".join(lines[i : i + 2 + count]))
        i += 2 + count


def _pdb_element(line: str) -> str:
    element = line[76:78].strip()
    return element or line[12:16].strip().lstrip("0123456789")[:1]


def _pdb_block(lines: list[str], conect: list[list[str]]) -> str:
    """Atom lines plus the CONECT records among them, re-written with only in-group partners."""
    serials = {line[6:11].strip() for line in lines}
    kept = []
    for fields in conect:
        partners = [s for s in fields[1:] if s in serials]
        if fields[0] in serials and partners:
            kept.append("CONECT" + "".join(f"{s:>5}" for s in [fields[0], *partners]))
    return "\n".join([*lines, *kept, "END"])


def _split_pdb(text: str, source: str) -> Iterator[_Item]:
    """HETATM residues (not water, not single-atom ions) as ligands; else all ATOM records as one.

    Only the first MODEL is read. Single-heavy-atom residues (metal ions, halides) are skipped
    without an error: they are not ligands the encoder should describe.
    """
    groups: dict[tuple[str, str, str], list[str]] = {}
    atoms: list[str] = []
    conect: list[list[str]] = []
    for raw in text.splitlines():
        line, record = raw.ljust(80), raw[:6]
        if record == "ENDMDL":
            break
        if record == "HETATM" and line[17:20].strip() not in _WATER:
            key = (line[21].strip() or "_", line[17:20].strip(), line[22:27].strip())
            groups.setdefault(key, []).append(line.rstrip())
        elif record == "ATOM  ":
            atoms.append(line.rstrip())
        elif record == "CONECT":
            conect.append([f for f in (line[j : j + 5].strip() for j in range(6, 31, 5)) if f])
    ligands = {
        key: lines
        for key, lines in groups.items()
        if sum(_pdb_element(line).upper() not in ("H", "D") for line in lines) >= 2
    }
    for (chain, resname, resnum), lines in ligands.items():
        yield _Chunk(f"{source}:{chain}:{resname}{resnum}", _pdb_block(lines, conect))
    if not ligands and atoms:
        yield _Chunk(source, _pdb_block(atoms, conect))
    elif not ligands:
        yield MoleculeError(ErrorCode.EMPTY_MOLECULE, "no HETATM ligand or ATOM records found", source)


def _parse_molblock(chunk: _Chunk, fmt: str, limits: InputLimits) -> MoleculeRecord:
    mol = _rdkit_parse(
        lambda s: Chem.MolFromMolBlock(chunk.text, sanitize=s, removeHs=False),
        ErrorCode.PARSE_ERROR,
        "record",
    )
    has_3d, warnings = coordinates_are_3d(mol), []
    if not has_3d and mol.GetNumConformers() and np.ptp(mol.GetConformer().GetPositions(), axis=0).max() > 0:
        warnings.append("input coordinates are 2D; a 3D conformer must be generated")
    return _make_record(mol, chunk.record_id, fmt, limits, has_3d=has_3d, warnings=warnings)


def _parse_xyz(chunk: _Chunk, limits: InputLimits, charge: int) -> MoleculeRecord:
    with rdkit_log() as log:
        mol = Chem.MolFromXYZBlock(chunk.text)
    if mol is None:
        raise MoleculeError(ErrorCode.PARSE_ERROR, log.text or "RDKit could not read the XYZ frame")
    _check_atoms(mol, limits)  # before bond perception: cheaper, and the clearer reason
    try:
        with rdkit_log():
            rdDetermineBonds.DetermineBonds(mol, charge=charge)
    except _RDKIT_ERRORS as exc:
        raise MoleculeError(ErrorCode.PARSE_ERROR, f"bond perception failed: {rdkit_message(str(exc))}") from None
    try:
        with rdkit_log():
            Chem.SanitizeMol(mol)
    except _RDKIT_ERRORS as exc:
        raise MoleculeError(ErrorCode.SANITIZATION_FAILED, rdkit_message(str(exc))) from None
    Chem.AssignStereochemistryFrom3D(mol)
    return _make_record(mol, chunk.record_id, "xyz", limits, has_3d=True, warnings=[])


def _parse_pdb(chunk: _Chunk, limits: InputLimits) -> MoleculeRecord:
    # Bonds from CONECT (repeated partners encode bond orders) plus proximity, since files often
    # list only some bonds; standard residues get bond orders from RDKit's templates.
    mol = _rdkit_parse(
        lambda s: Chem.MolFromPDBBlock(chunk.text, sanitize=s, removeHs=False, proximityBonding=True),
        ErrorCode.PARSE_ERROR,
        "PDB record",
    )
    warnings: list[str] = []
    orders_known = any(b.GetBondType() != Chem.BondType.SINGLE for b in mol.GetBonds())
    if not orders_known:  # neither CONECT bond orders nor standard-residue templates applied
        if any(a.GetAtomicNum() == 1 for a in mol.GetAtoms()):
            trial = Chem.Mol(mol)
            try:
                with rdkit_log():
                    rdDetermineBonds.DetermineBondOrders(trial, charge=Chem.GetFormalCharge(mol))
                    Chem.SanitizeMol(trial)
                mol, orders_known = trial, True
            except _RDKIT_ERRORS:
                pass  # keep the connectivity; the warning below says so
        if not orders_known:
            warnings.append(PDB_BOND_ORDER_WARNING)
    Chem.AssignStereochemistryFrom3D(mol)
    return _make_record(mol, chunk.record_id, "pdb", limits, has_3d=True, warnings=warnings)


_SPLITTERS: dict[str, Callable[[str, str], Iterator[_Item]]] = {
    "smiles": _split_smiles,
    "sdf": _split_sdf,
    "mol": _split_mol,
    "xyz": _split_xyz,
    "pdb": _split_pdb,
}


def _unknown_format(fmt: str, source: str) -> MoleculeError:
    return MoleculeError(ErrorCode.UNSUPPORTED_FORMAT, f"unknown format {fmt!r}; use {FORMATS}", source)


def _parse_chunk(chunk: _Chunk, fmt: str, limits: InputLimits, xyz_charge: int) -> MoleculeRecord:
    if fmt == "smiles":
        return parse_smiles(chunk.text, record_id=chunk.record_id, limits=limits)
    if fmt in ("sdf", "mol"):
        return _parse_molblock(chunk, fmt, limits)
    if fmt == "xyz":
        return _parse_xyz(chunk, limits, xyz_charge)
    return _parse_pdb(chunk, limits)


def parse_text(
    text: str,
    fmt: str,
    *,
    record_id: str | None = None,
    limits: InputLimits = DEFAULT_LIMITS,
    xyz_charge: int = 0,
) -> Iterator[MoleculeRecord | MoleculeError]:
    """Parse text in one of FORMATS, one result per record, never raising for a bad record.

    `record_id` names the source (usually the file path; default "<text>") and builds ids for records
    without a title: "{source}:{line}" (SMILES), "{source}#{index}" (SDF/XYZ, 1-based), the source itself
    (MOL without title, PDB ATOM records). `xyz_charge` is the total charge of every XYZ frame.
    """
    source = record_id or "<text>"
    if fmt not in _SPLITTERS:
        yield _unknown_format(fmt, source)
        return
    size = len(text.encode("utf-8"))
    if size > limits.max_input_bytes:
        yield MoleculeError(
            ErrorCode.INPUT_TOO_LARGE, f"input is {size} bytes; the limit is {limits.max_input_bytes}", source
        )
        return
    for raw in split_text(text, fmt, source):
        yield raw if isinstance(raw, MoleculeError) else _parse_raw(raw, limits, xyz_charge)


def _read_file(path: str, limits: InputLimits) -> tuple[str, str]:
    """(format, text) of a file; raises MoleculeError for a whole-file problem."""
    fmt = detect_format(path)
    try:
        size = os.path.getsize(path)
        if size > limits.max_input_bytes:
            raise MoleculeError(
                ErrorCode.INPUT_TOO_LARGE,
                f"file is {size} bytes; the limit is {limits.max_input_bytes}",
                path,
            )
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise MoleculeError(ErrorCode.INPUT_UNREADABLE, f"cannot read file: {exc.strerror or exc}", path) from None
    # Undecodable bytes can only sit in titles or data fields; coordinates are ASCII.
    return fmt, data.decode("utf-8-sig", errors="replace")


def _is_path_like(item: str) -> bool:
    """A missing file named with a known extension: no valid SMILES ends in ".sdf", ".smi", ... ."""
    return os.path.exists(item) or os.path.splitext(item)[1].lower() in _EXTENSIONS


def read_inputs(
    inputs: Sequence[str], *, limits: InputLimits = DEFAULT_LIMITS, xyz_charge: int = 0
) -> Iterator[MoleculeRecord | MoleculeError]:
    """Read each input: an existing file (format from its extension) or else a SMILES string.

    A SMILES argument may carry a name like a SMILES-file line ("CCO ethanol"); without one its id is
    "arg{i}" (1-based position in `inputs`). A whole-file problem yields one error and reading goes on.
    """
    for raw in split_inputs(inputs, limits=limits):
        yield raw if isinstance(raw, MoleculeError) else _parse_raw(raw, limits, xyz_charge)


def count_records(inputs: Sequence[str], *, limits: InputLimits = DEFAULT_LIMITS) -> int | None:
    """How many results `read_inputs` will yield (a progress-bar total), found by splitting without parsing.

    Exact for every current format; None is kept for inputs that cannot be counted cheaply.
    """
    return sum(1 for _ in split_inputs(inputs, limits=limits))


@dataclass
class RawRecord:
    """One record cut out of an input, not parsed: parse it where it is processed (a bulk job's worker)
    with `parse_text(text, fmt, record_id=record_id)`."""

    record_id: str
    fmt: str
    text: str


def split_inputs(inputs: Sequence[str], *, limits: InputLimits = DEFAULT_LIMITS) -> Iterator[RawRecord | MoleculeError]:
    """The records of each input (a file, or else a SMILES argument) in order, as `read_inputs` would
    yield them but unparsed; a whole-file problem or a broken frame yields a MoleculeError."""
    for i, item in enumerate(inputs, start=1):
        if os.path.isfile(item):
            try:
                fmt, text = _read_file(item, limits)
            except MoleculeError as exc:
                yield exc
                continue
            yield from split_text(text, fmt, item)
        elif _is_path_like(item):
            yield MoleculeError(ErrorCode.INPUT_UNREADABLE, "no such file", item)
        else:
            tokens = item.split()
            yield RawRecord(tokens[1] if len(tokens) > 1 else f"arg{i}", "smiles", tokens[0] if tokens else "")


def split_text(text: str, fmt: str, source: str = "<text>") -> Iterator[RawRecord | MoleculeError]:
    """The records of one input's text in `fmt`, in order and unparsed: what `read_inputs` and
    `parse_text` cut a file into (a broken XYZ frame or a PDB without atoms yields a MoleculeError).
    `source` names the input and builds the ids of untitled records (see `parse_text`). The caller
    bounds the text's size (InputLimits.max_input_bytes)."""
    if fmt not in _SPLITTERS:
        yield _unknown_format(fmt, source)
        return
    for chunk in _SPLITTERS[fmt](text, source):
        yield chunk if isinstance(chunk, MoleculeError) else RawRecord(chunk.record_id, fmt, chunk.text)


def _parse_raw(raw: RawRecord, limits: InputLimits, xyz_charge: int) -> MoleculeRecord | MoleculeError:
    """One cut-out record parsed; a bad one as its MoleculeError (named after the record)."""
    try:
        return _parse_chunk(_Chunk(raw.record_id, raw.text), raw.fmt, limits, xyz_charge)
    except MoleculeError as exc:
        return exc.with_record(raw.record_id)
