"""Typed errors for bad input.

Every way a molecule can be rejected has an `ErrorCode`. Services map a `MoleculeError` to gRPC
INVALID_ARGUMENT (or a dead-letter record) with the code and message, so the reason reaches the user
and one bad record never takes a batch down with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_SMILES = "invalid_smiles"  # SMILES syntax error
    PARSE_ERROR = "parse_error"  # a MOL/SDF/XYZ/PDB record that RDKit cannot read
    SANITIZATION_FAILED = "sanitization_failed"  # read, but chemically invalid (valence, aromaticity)
    UNSUPPORTED_ELEMENT = "unsupported_element"  # an element outside the encoder's atom dictionary
    TOO_MANY_ATOMS = "too_many_atoms"  # above InputLimits.max_heavy_atoms
    INPUT_TOO_LARGE = "input_too_large"  # above InputLimits.max_input_bytes / max_smiles_length
    EMPTY_MOLECULE = "empty_molecule"  # no heavy atoms
    UNSUPPORTED_FORMAT = "unsupported_format"  # unknown file extension / format name
    INPUT_UNREADABLE = "input_unreadable"  # a named input file that is missing or cannot be read
    CONFORMER_FAILED = "conformer_failed"  # every step of the conformer fallback chain failed
    INVALID_REQUEST = "invalid_request"  # a malformed request (empty question, bad option)


@dataclass
class MoleculeError(ValueError):
    """A record that cannot be used, with the reason.

    `record_id` names the record (its title, id column or `file:line`), so a user can find it.
    """

    code: ErrorCode
    message: str
    record_id: str | None = None

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.record_id}: " if self.record_id else ""
        return f"{where}{self.code.value}: {self.message}"

    def with_record(self, record_id: str) -> MoleculeError:
        return MoleculeError(self.code, self.message, record_id)

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code.value, "message": self.message, "record_id": self.record_id}
