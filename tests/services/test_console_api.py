"""The web console's molecule routes (POST /v1/molecule, /v1/depict) on the shared stack, the inner RPCs
behind them (ConformerService/Depict, EncoderService/PredictProperties), and the encoder's property values
with untrained and trained heads, in process. The stack's tiny checkpoint has trained heads (conftest)."""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest
from molm3d.v1 import common_pb2, conformer_pb2, conformer_pb2_grpc, encoder_pb2, encoder_pb2_grpc
from rdkit import Chem

from molm3d_core.chem.depict import depict_svg

from .conftest import TOKEN
from .test_serving import http_json

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
URL = re.compile(r"https?://[^\s'\"<>)]*")
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def post(served, route: str, body: dict | bytes | None, token: str | None = TOKEN, method: str = "POST"):
    """(status, JSON reply) of an HTTP request to the stack's gateway."""
    return http_json(f"{served.http}{route}", body, token, method)


def meta(app: str) -> list[tuple[str, str]]:
    return [("application", app), ("authorization", f"Bearer {TOKEN}")]


@pytest.fixture(scope="module")
def channel(served):
    with grpc.insecure_channel(served.target) as ch:
        yield ch


def assert_self_contained_svg(svg: str) -> None:
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>"), svg[:80]
    assert set(URL.findall(svg)) == {SVG_NAMESPACE}, set(URL.findall(svg))
    assert "<script" not in svg and "href" not in svg and "@import" not in svg and "url(" not in svg


# -- /v1/molecule ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aspirin(served) -> dict:
    status, body = post(served, "/v1/molecule", {"molecule": {"text": ASPIRIN, "id": "asp"}})
    assert status == 200, body
    return body


def test_molecule_gives_the_conformer_the_encoder_reads(served, channel, aspirin):
    c = aspirin["conformer"]
    assert c["record_id"] == "asp" and c["source_format"] == "smiles"
    assert c["smiles"] == ASPIRIN and c["inchikey"] == "BSYNRYMUTXBXSQ-UHFFFAOYSA-N"
    assert len(c["elements"]) == 13 and c["elements"].count("C") == 9 and c["elements"].count("O") == 4
    assert len(c["coordinates"]) == 3 * 13 and isinstance(c["warnings"], list)
    # exactly the conformer stage's Generate result, which the gateway hands to the encoder
    generated = conformer_pb2_grpc.ConformerServiceStub(channel).Generate(
        common_pb2.MoleculeInput(text=ASPIRIN, id="asp"), metadata=meta("conformer")
    )
    assert c["elements"] == list(generated.elements) and c["method"] == generated.method
    assert np.array_equal(np.float32(c["coordinates"]), np.float32(generated.coordinates))
    # and the same provenance that /v1/ask reports for the same input
    status, answer = post(served, "/v1/ask", {"molecule": {"text": ASPIRIN}, "question": "What is its HOMO?",
                                              "decoding": {"max_new_tokens": 1}})  # fmt: skip
    assert status == 200, answer
    assert (c["method"], c["smiles"], c["inchikey"]) == (
        answer["conformer_method"],
        answer["smiles"],
        answer["inchikey"],
    )
    assert c["method"].startswith("etkdg_v3") and aspirin["model_id"] == answer["model_id"] == "molm3d-tiny-test"


def test_molecule_xyz_parses_back_to_the_same_atoms(aspirin):
    c = aspirin["conformer"]
    mol = Chem.MolFromXYZBlock(c["xyz"])
    assert mol is not None and c["xyz"].splitlines()[0] == "13"
    assert [a.GetSymbol() for a in mol.GetAtoms()] == c["elements"]
    positions = mol.GetConformer().GetPositions()
    assert np.abs(positions - np.reshape(c["coordinates"], (13, 3))).max() < 1e-5


def test_molecule_has_a_self_contained_depiction(aspirin):
    svg = aspirin["depiction_svg"]
    assert_self_contained_svg(svg)
    assert svg == depict_svg(aspirin["conformer"]["smiles"], 320, 240)  # RDKit's drawing, as the library makes it


def test_molecule_gives_the_property_heads_values(aspirin, tiny_checkpoint):
    from molm3d_core.checkpoints import load_model
    from molm3d_core.chem import parse_smiles
    from molm3d_core.pipeline import Predictor
    from molm3d_core.targets import TARGETS

    model, info = load_model(tiny_checkpoint, device="cpu", dtype="float32", with_lm=False)
    assert model.property_head.trained  # the stack's checkpoint (conftest: made-up statistics)
    (row,) = Predictor(model, info).run([parse_smiles(ASPIRIN)], "predict")
    assert aspirin["properties_trained"] is True
    assert [p["name"] for p in aspirin["properties"]] == list(model.property_head.targets) == list(row["properties"])
    for p in aspirin["properties"]:
        assert p["value"] == pytest.approx(row["properties"][p["name"]]["value"], rel=1e-4, abs=1e-6)
        assert (p["unit"], p["description"]) == (TARGETS[p["name"]].unit or "", TARGETS[p["name"]].description)
    assert next(p for p in aspirin["properties"] if p["name"] == "homo")["unit"] == "eV"


def test_molecule_keeps_the_coordinates_of_3d_input(served):
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("OCC(N)=O"))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    given = mol.GetConformer().GetPositions()[heavy]
    status, body = post(served, "/v1/molecule", {"molecule": {"text": Chem.MolToMolBlock(mol), "format": "sdf"}})
    assert status == 200, body
    c = body["conformer"]
    assert c["method"] == "input_3d" and c["source_format"] == "sdf" and c["smiles"] == "NC(=O)CO"
    assert c["elements"] == [mol.GetAtomWithIdx(i).GetSymbol() for i in heavy]
    assert np.abs(np.reshape(c["coordinates"], (-1, 3)) - given).max() < 1e-4  # the molblock's 4 decimals
    assert_self_contained_svg(body["depiction_svg"])


def test_a_bad_molecule_is_the_error_ask_gives(served):
    status, body = post(served, "/v1/molecule", {"molecule": {"text": "C1CC"}})
    assert status == 400 and body["error"]["code"] == "invalid_smiles", body
    ask_status, ask = post(served, "/v1/ask", {"molecule": {"text": "C1CC"}, "question": "HOMO?"})
    assert (ask_status, ask["error"]) == (status, body["error"])
    for request, code in (
        ({"molecule": {"text": "[U]"}}, "unsupported_element"),
        ({"molecule": {"text": ""}}, "invalid_request"),
        ({}, "invalid_request"),
        ({"molecule": "CCO"}, "invalid_request"),  # bad JSON body: not an object
        ({"molecule": {"text": "CCO"}, "question": "x"}, "invalid_request"),  # no such field
    ):
        status, body = post(served, "/v1/molecule", request)
        assert status == 400 and body["error"]["code"] == code, (request, body)
    status, body = post(served, "/v1/molecule", b"{nope")
    assert status == 400 and body["error"]["message"].startswith("bad JSON body"), body


# -- /v1/depict ------------------------------------------------------------------------------------


def test_depict_gives_null_for_a_bad_smiles_and_keeps_the_others(served):
    status, body = post(served, "/v1/depict", {"smiles": ["CCO", "C1CC", "c1ccccc1"], "width": 200, "height": 150})
    assert status == 200, body
    first, bad, third = body["svgs"]
    assert bad is None
    for svg, smiles in ((first, "CCO"), (third, "c1ccccc1")):
        assert_self_contained_svg(svg)
        assert "width='200px' height='150px'" in svg and svg == depict_svg(smiles, 200, 150)
    status, body = post(served, "/v1/depict", {"smiles": ["OCC"]})  # the canonical SMILES' drawing, 240 x 180
    assert status == 200 and body["svgs"] == [depict_svg("CCO", 240, 180)], body
    assert post(served, "/v1/depict", {"smiles": []}) == (200, {"svgs": []})


@pytest.mark.parametrize(
    "request_body, piece",
    [
        ({"smiles": ["C"] * 101}, "limit is 100"),
        ({"smiles": ["CCO"], "width": 5}, "width"),
        ({"smiles": ["CCO"], "height": 100_000}, "height"),
        ({"smiles": ["CCO"], "width": -1}, "width"),
        ({"smiles": "CCO"}, "bad JSON body"),
        ({"smiles": ["CCO"], "colour": "red"}, "bad JSON body"),
    ],
)
def test_depict_refuses_bad_requests(served, request_body, piece):
    status, body = post(served, "/v1/depict", request_body)
    assert status == 400 and body["error"]["code"] == "invalid_request" and piece in body["error"]["message"], body


# -- token and methods -----------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/v1/molecule", "/v1/depict"])
def test_token_first_and_post_only(served, route):
    good = {"molecule": {"text": "CCO"}} if route == "/v1/molecule" else {"smiles": ["CCO"]}
    for token, body in ((None, good), ("nope", good), (None, b"[[[")):  # the token is judged before the body
        status, reply = post(served, route, body, token=token)
        assert status == 401 and reply["error"]["code"] == "unauthenticated", reply
    for method in ("GET", "PUT", "DELETE"):
        status, reply = post(served, route, None if method == "GET" else b"{}", method=method)
        assert status == 405 and reply["error"]["code"] == "method_not_allowed", reply
    status, reply = post(served, route + "/x", good)
    assert status == 404 and reply["error"]["code"] == "not_found", reply


# -- the inner RPCs over gRPC ----------------------------------------------------------------------


def test_inner_rpcs_over_grpc(channel, aspirin):
    conformers = conformer_pb2_grpc.ConformerServiceStub(channel)
    depiction = conformers.Depict(conformer_pb2.DepictRequest(smiles=["CCO", "C1CC"]), metadata=meta("conformer"))
    assert list(depiction.svgs) == [depict_svg("CCO", 240, 180), ""]
    conformer = conformers.Generate(common_pb2.MoleculeInput(text=ASPIRIN), metadata=meta("conformer"))
    encoder = encoder_pb2_grpc.EncoderServiceStub(channel)
    values = encoder.PredictProperties(encoder_pb2.EncodeRequest(conformer=conformer), metadata=meta("encoder"))
    assert values.trained and values.model_id == "molm3d-tiny-test"
    assert [(v.name, v.unit) for v in values.values] == [(p["name"], p["unit"]) for p in aspirin["properties"]]
    assert [v.value for v in values.values] == pytest.approx([p["value"] for p in aspirin["properties"]], rel=1e-4)
    with pytest.raises(grpc.RpcError) as caught:  # the checks Encode makes
        encoder.PredictProperties(encoder_pb2.EncodeRequest(), metadata=meta("encoder"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no atoms" in caught.value.details()


# -- property values in process --------------------------------------------------------------------


def test_property_values_are_the_library_predictions_when_the_heads_are_trained(tiny_checkpoint):
    import torch

    from molm3d_core.checkpoints import load_model
    from molm3d_core.chem import ConformerOptions, featurize, generate_conformer, parse_smiles
    from molm3d_core.pipeline import Predictor
    from molm3d_core.targets import TARGETS
    from molm3d_services.encoder.deployment import property_values

    model, info = load_model(tiny_checkpoint, device="cpu", dtype="float32", with_lm=False)
    model.property_head.config.mean = model.property_head.config.std = None  # as before stage 0
    records = [parse_smiles(s) for s in (ASPIRIN, "CCO")]
    features = [featurize(generate_conformer(r, ConformerOptions()), max_atoms=model.config.max_atoms) for r in records]

    untrained = property_values(model, features, "m")
    assert [(v.trained, len(v.values), v.model_id) for v in untrained] == [(False, 0, "m")] * 2

    head = model.property_head
    n = len(head.targets)
    rows = torch.arange(4 * n, dtype=torch.float64).reshape(4, n) / 7  # made-up training targets
    head.set_statistics(rows, torch.ones(4, n, dtype=torch.bool))
    trained = property_values(model, features, "m")
    rows = list(Predictor(model, info).run(records, "predict"))
    for values, row in zip(trained, rows, strict=True):
        assert values.trained and values.model_id == "m"
        assert [v.name for v in values.values] == list(head.targets) == list(row["properties"])
        for v in values.values:
            assert v.value == pytest.approx(row["properties"][v.name]["value"], rel=1e-12, abs=1e-12)
            assert v.unit == (TARGETS[v.name].unit or "") and v.description == TARGETS[v.name].description
    assert trained[0].values[0].value != trained[1].values[0].value  # per molecule
