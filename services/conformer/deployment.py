"""Conformer stage (CPU): one molecule's text -> a 3D conformer, with an InChIKey-keyed LRU cache;
and SMILES -> 2D drawings (SVG) for the web console (Depict).

Generated conformers are cached under (InChIKey, canonical SMILES): the SMILES guards against
standard InChI merging tautomers. Coordinates that came with the input (SDF/MOL/XYZ/PDB in 3D) are
the user's and are never cached.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from molm3d.v1 import common_pb2, conformer_pb2
from ray import serve

from molm3d_core.chem import ConformerOptions, InputLimits, MoleculeRecord, generate_conformer, parse_text
from molm3d_core.chem.depict import MAX_SIZE, MIN_SIZE, depict_svg
from molm3d_core.errors import MoleculeError

from ..common.settings import StageSettings, setting
from ..common.stage import Stage, invalid_request, rpc

MAX_DEPICT_SMILES = 100  # per Depict request: a page of search hits
DEPICT_SIZE = (240, 180)  # pixels, when the request leaves width / height at 0
log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ConformerSettings(StageSettings):
    """user_config of the Conformer deployment; the defaults are the library's (`molm3d caption`'s)."""

    cache_size: int = setting(10_000, ge=0)  # generated conformers kept per replica (LRU); 0 = no cache
    max_heavy_atoms: int = setting(InputLimits.max_heavy_atoms, ge=1)  # larger molecules: too_many_atoms
    n_conformers: int = setting(ConformerOptions.n_conformers, ge=1)  # ETKDG embeddings; lowest energy kept
    seed: int = ConformerOptions.seed
    timeout_s: int = setting(ConformerOptions.timeout_s, ge=1)  # per ETKDG attempt


def parse_one(molecule: common_pb2.MoleculeInput, limits: InputLimits) -> MoleculeRecord:
    """The single record of a MoleculeInput; MoleculeError for none, several, or a bad one."""
    fmt = molecule.format.strip().lower() or "smiles"
    rid = molecule.id or None
    if not molecule.text.strip():
        raise invalid_request("molecule text is empty", molecule.id)
    results = list(parse_text(molecule.text, fmt, record_id=rid or "molecule", limits=limits))
    if len(results) != 1:
        raise invalid_request(f"expected one molecule, got {len(results)} records", molecule.id)
    result = results[0]
    if isinstance(result, MoleculeError):
        raise result.with_record(rid) if rid else result
    if rid:
        result.record_id = rid
    return result


def depict_size(request: conformer_pb2.DepictRequest) -> tuple[int, int]:
    """The request's (width, height), 0 meaning the default; MoleculeError for a side out of range."""
    size = []
    for name, value, default in (("width", request.width, DEPICT_SIZE[0]), ("height", request.height, DEPICT_SIZE[1])):
        value = value or default
        if not MIN_SIZE <= value <= MAX_SIZE:
            raise invalid_request(f"{name} must be in {MIN_SIZE}..{MAX_SIZE} pixels, got {value}")
        size.append(value)
    return size[0], size[1]


def depict_or_empty(smiles: str, width: int, height: int, limits: InputLimits) -> str:
    """The SVG of one SMILES, or "" when it cannot be drawn: one bad SMILES (a search hit, a typo)
    must not cost the page its other drawings."""
    try:
        return depict_svg(smiles, width, height, limits=limits)
    except MoleculeError:
        return ""
    except Exception:  # RDKit failing on a molecule it parsed: that drawing only, logged
        log.warning("conformer: could not draw a SMILES of %d characters", len(smiles), exc_info=True)
        return ""


def conformer_message(record: MoleculeRecord, conformer: Any) -> common_pb2.Conformer:
    elements, coords = conformer.heavy_atoms()
    return common_pb2.Conformer(
        record_id=record.record_id,
        smiles=record.smiles,
        inchikey=record.inchikey or "",
        source_format=record.source_format,
        elements=elements,
        coordinates=coords.reshape(-1).tolist(),
        method=conformer.method,
        warnings=[*record.warnings, *conformer.warnings],
    )


@serve.deployment(name="Conformer")
class ConformerStage(Stage):
    stage = "conformer"

    def __init__(self) -> None:
        self.reconfigure({})

    def reconfigure(self, config: dict[str, Any]) -> None:
        s = ConformerSettings.from_user_config(config)
        self._init_stage(s.token_env)
        self.limits = InputLimits(max_heavy_atoms=s.max_heavy_atoms)
        self.options = ConformerOptions(n_conformers=s.n_conformers, seed=s.seed, timeout_s=s.timeout_s)
        self.cache_size = s.cache_size
        self.cache: OrderedDict[tuple[str, str], common_pb2.Conformer] = OrderedDict()

    def _generate(self, record: MoleculeRecord) -> common_pb2.Conformer:
        cacheable = not (record.has_3d and self.options.use_input_3d) and record.inchikey and self.cache_size > 0
        key = (record.inchikey or "", record.smiles)
        if cacheable and key in self.cache:
            self.cache.move_to_end(key)
            self.metrics.cache_lookup(True)
            cached = self.cache[key]
            out = common_pb2.Conformer()
            out.CopyFrom(cached)
            out.record_id, out.source_format = record.record_id, record.source_format
            del out.warnings[:]
            out.warnings.extend([*record.warnings, *cached.warnings])
            return out
        try:
            conformer = generate_conformer(record, self.options)
        except MoleculeError as err:
            raise err.with_record(record.record_id) from None
        message = conformer_message(record, conformer)
        if cacheable:
            self.metrics.cache_lookup(False)
            stored = common_pb2.Conformer()
            stored.CopyFrom(message)
            del stored.warnings[:]
            stored.warnings.extend(conformer.warnings)  # the record's own warnings are per request
            self.cache[key] = stored
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return message

    @rpc
    async def Generate(self, request: common_pb2.MoleculeInput, grpc_context: Any = None) -> common_pb2.Conformer:
        record = parse_one(request, self.limits)
        # RDKit work off the event loop, so health checks and queued requests are still answered.
        return await asyncio.to_thread(self._generate, record)

    @rpc
    async def Depict(
        self, request: conformer_pb2.DepictRequest, grpc_context: Any = None
    ) -> conformer_pb2.DepictResult:
        if len(request.smiles) > MAX_DEPICT_SMILES:
            raise invalid_request(f"got {len(request.smiles)} SMILES; the limit is {MAX_DEPICT_SMILES}")
        width, height = depict_size(request)
        smiles, limits = list(request.smiles), self.limits
        # RDKit drawing is CPU work: off the event loop, as Generate's.
        svgs = await asyncio.to_thread(lambda: [depict_or_empty(s, width, height, limits) for s in smiles])
        return conformer_pb2.DepictResult(svgs=svgs)

    async def ready(self) -> bool:
        return True


def build(args: dict[str, Any] | None = None) -> serve.Application:
    return ConformerStage.bind()


app = ConformerStage.bind()
