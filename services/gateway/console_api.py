"""The web console's molecule data on the gateway's HTTP port (services/README.md, "API").

POST /v1/molecule  {"molecule": {"text", "format"?, "id"?}}
    -> {"conformer": {record_id, smiles, inchikey, source_format, method, warnings, elements, coordinates, xyz},
        "depiction_svg", "properties": [{name, value, unit, description}], "properties_trained", "model_id"}
POST /v1/depict    {"smiles": [...], "width"?, "height"?} -> {"svgs": ["<svg ...>" | null, ...]}

The conformer is the conformer stage's Generate result for the input: the same (cached, deterministic)
one the encoder reads for Caption, Ask and Embed of that input, heavy atoms only. The depiction is the
conformer stage's RDKit drawing of its canonical SMILES; the properties are the encoder's property
heads on that conformer, or none when the checkpoint's heads were never trained. Token first (401),
then the body (400 `invalid_request`), then the call under the request's deadline; errors in the
gateway's HTTP error body (http.py `error_response`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import numpy as np
from molm3d.v1 import common_pb2, conformer_pb2, encoder_pb2, gateway_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from molm3d_core.chem.depict import xyz_block

from ..common.auth import check_grpc
from .http import HttpCallContext, bad_body, error_response, no_route, parse_body, wrong_method

if TYPE_CHECKING:
    from .deployment import GatewayStage

MOLECULE_SVG_SIZE = (320, 240)  # the molecule page's depiction (the SVG has a viewBox: it scales)


def conformer_json(conformer: common_pb2.Conformer) -> dict[str, Any]:
    """A Conformer message as the console reads it, every field present, plus its XYZ text."""
    coords = np.asarray(conformer.coordinates, dtype=np.float32)
    return {
        "record_id": conformer.record_id,
        "smiles": conformer.smiles,
        "inchikey": conformer.inchikey,
        "source_format": conformer.source_format,
        "method": conformer.method,
        "warnings": list(conformer.warnings),
        "elements": list(conformer.elements),
        "coordinates": [float(str(v)) for v in coords],  # the float32 values, in their shortest form
        "xyz": xyz_block(list(conformer.elements), coords, comment=f"{conformer.smiles} {conformer.method}"),
    }


def properties_json(values: encoder_pb2.PropertyValues) -> list[dict[str, Any]]:
    return [{"name": v.name, "value": v.value, "unit": v.unit, "description": v.description} for v in values.values]


async def molecule(gateway: GatewayStage, request: gateway_pb2.EmbedRequest) -> dict[str, Any]:
    conformer = await gateway._call("conformer", "Generate", request.molecule)
    width, height = MOLECULE_SVG_SIZE
    drawing = conformer_pb2.DepictRequest(smiles=[conformer.smiles], width=width, height=height)
    depiction, properties = await asyncio.gather(
        gateway._call("conformer", "Depict", drawing),
        gateway._call("encoder", "PredictProperties", encoder_pb2.EncodeRequest(conformer=conformer)),
    )
    return {
        "conformer": conformer_json(conformer),
        "depiction_svg": (depiction.svgs[0] or None) if depiction.svgs else None,
        "properties": properties_json(properties),
        "properties_trained": properties.trained,
        "model_id": properties.model_id,
    }


async def depict(gateway: GatewayStage, request: conformer_pb2.DepictRequest) -> dict[str, Any]:
    depiction = await gateway._call("conformer", "Depict", request)
    return {"svgs": [svg or None for svg in depiction.svgs]}


ROUTES = {  # path -> (metrics name, request message, handler)
    "/v1/molecule": ("Molecule", gateway_pb2.EmbedRequest, molecule),
    "/v1/depict": ("Depict", conformer_pb2.DepictRequest, depict),
}


async def handle_console(gateway: GatewayStage, request: Request, path: str) -> Response:
    if path not in ROUTES:
        return no_route(request, path)
    if request.method != "POST":
        return wrong_method("POST")
    name, message_type, handler = ROUTES[path]
    with gateway.metrics.request(name):
        try:
            context = HttpCallContext(request.headers)
            check_grpc(context, gateway.token, gateway.stage)  # the token before the body
            try:
                message = parse_body(await request.body(), message_type)
            except ValueError as err:
                raise bad_body(err, gateway.stage) from None
            body = await asyncio.wait_for(handler(gateway, message), gateway._timeout(context))
        except Exception as exc:
            return error_response(gateway._fail(exc, None))
    return JSONResponse(body)
