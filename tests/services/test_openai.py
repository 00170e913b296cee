"""The OpenAI-compatible routes, driven by the official `openai` client (unmodified) against the shared
`molm3d serve` stack: every molecule answer is compared with what Ask (or, for prompts Ask cannot
express, the library in this process) returns for the same molecule, question and decoding."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch

from .conftest import TOKEN
from .test_serving import http_json

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
QUESTION = "What is the HOMO energy of this molecule?"
MODEL_ID = "molm3d-tiny-test"  # tests/services/conftest.py's checkpoint


@pytest.fixture(scope="module")
def oa(served):
    with openai.OpenAI(base_url=f"{served.http}/v1", api_key=TOKEN, max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def library(tiny_checkpoint):
    from molm3d_core.checkpoints import load_model

    model, _ = load_model(tiny_checkpoint, device="cpu", dtype="float32")
    return model


def ask(served, smiles: str, question: str, **decoding) -> dict:
    status, body = http_json(
        f"{served.http}/v1/ask", {"molecule": {"text": smiles}, "question": question, "decoding": decoding}
    )
    assert status == 200, body
    return body


def local_answer(model, smiles: list[str], question: str, history=(), system: str = "", **decoding) -> str:
    """The library's answer in this process: conformers, encoder, Q-Former and LM, no services."""
    from molm3d_core.chem import ConformerOptions, parse_smiles
    from molm3d_core.chem.featurize import collate
    from molm3d_core.decoding import default_decoding
    from molm3d_core.pipeline import prepare_molecule

    prepared = [prepare_molecule(parse_smiles(s, record_id=str(i)), ConformerOptions(), model.config.max_atoms)
                for i, s in enumerate(smiles)]  # fmt: skip
    with torch.no_grad():
        tokens = model.molecule_tokens(collate([p.features for p in prepared])) if prepared else None
        prompt = model.prompt(question, [p.record.smiles for p in prepared], history=history, system=system)
        (generation,) = model.lm.generate([prompt], tokens, default_decoding("ask", **decoding))
    return generation.text


def molecule(smiles: str) -> dict:
    return {"type": "molecule", "molecule": {"smiles": smiles}}


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


# -- models ---------------------------------------------------------------------------------------------------


def test_models_lists_the_served_checkpoint(oa):
    (model,) = oa.models.list().data
    assert model.id == MODEL_ID and model.owned_by == "molm3d" and model.created > 0
    provenance = model.model_extra["molm3d"]
    assert provenance["model_id"] == MODEL_ID and provenance["trained"] is True
    assert provenance["molecule_tokens"] == 8 and provenance["base_lm"]
    assert not any("/" in str(v) and str(v).startswith("/") for v in provenance.values())  # no server paths
    assert oa.models.retrieve(MODEL_ID).id == MODEL_ID
    with pytest.raises(openai.NotFoundError):
        oa.models.retrieve("gpt-4o")


# -- chat: answers equal Ask's ----------------------------------------------------------------------------------


def test_chat_with_one_molecule_answers_what_ask_answers(served, oa):
    expected = ask(served, ASPIRIN, QUESTION, max_new_tokens=12)
    done = oa.chat.completions.create(
        model=MODEL_ID, messages=user({"type": "text", "text": QUESTION}, molecule(ASPIRIN)), max_tokens=12
    )
    (choice,) = done.choices
    assert choice.message.role == "assistant" and choice.message.content == expected["text"]
    assert choice.finish_reason == {"eos": "stop", "length": "length"}[expected["finish_reason"]]
    assert done.model == MODEL_ID and done.id.startswith("chatcmpl-") and done.object == "chat.completion"
    assert done.usage.completion_tokens == expected["num_tokens"]
    assert done.usage.prompt_tokens > 8  # the 8 <mol> placeholders and the question
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    (provenance,) = done.model_extra["molm3d"]["molecules"]
    assert (provenance["smiles"], provenance["inchikey"], provenance["conformer_method"]) == (
        expected["smiles"],
        expected["inchikey"],
        expected["conformer_method"],
    )
    assert done.model_extra["molm3d"]["model_id"] == MODEL_ID

    # The inline form for clients that send strings only, and max_completion_tokens: the same answer.
    inline = oa.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": f"<molecule>{ASPIRIN}</molecule> {QUESTION}"}],
        max_completion_tokens=12,
    )
    assert inline.choices[0].message.content == expected["text"]


def test_chat_with_an_sdf_part_and_a_molecule_alone_is_a_caption(served, oa):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    block = Chem.MolToMolBlock(mol)
    part = {"type": "molecule", "molecule": {"format": "sdf", "text": block}}
    done = oa.chat.completions.create(model=MODEL_ID, messages=user(part), max_tokens=10)
    status, caption = http_json(
        f"{served.http}/v1/caption",
        {"molecule": {"format": "sdf", "text": block}, "decoding": {"max_new_tokens": 10}},
    )
    assert status == 200
    assert done.choices[0].message.content == caption["text"]
    assert done.model_extra["molm3d"]["molecules"][0]["conformer_method"] == caption["conformer_method"] == "input_3d"


def test_chat_with_two_molecules_and_history_equals_the_library(oa, library):
    history = [("Which is larger?", "The first one."), ("Why?", "It has more atoms.")]
    messages = [
        {"role": "system", "content": "You are a chemist."},
        {"role": "user", "content": [molecule(ASPIRIN), molecule("CCO"), {"type": "text", "text": history[0][0]}]},
        {"role": "assistant", "content": history[0][1]},
        {"role": "user", "content": history[1][0]},
        {"role": "assistant", "content": history[1][1]},
        {"role": "user", "content": "Compare their HOMO energies."},
    ]
    done = oa.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=10)
    expected = local_answer(library, [ASPIRIN, "CCO"], "Compare their HOMO energies.", history=history,
                            system="You are a chemist.", max_new_tokens=10)  # fmt: skip
    assert done.choices[0].message.content == expected
    smiles = [m["smiles"] for m in done.model_extra["molm3d"]["molecules"]]
    assert len(smiles) == 2 and smiles[1] == "CCO"


def test_chat_without_a_molecule_is_answered_as_plain_text(oa, library):
    done = oa.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "What is a carboxylic acid?"}], max_tokens=8
    )
    assert done.choices[0].message.content == local_answer(library, [], "What is a carboxylic acid?", max_new_tokens=8)
    assert done.model_extra["molm3d"]["molecules"] == []


def test_streamed_chat_adds_up_to_ask(served, oa):
    expected = ask(served, "CCO", QUESTION, max_new_tokens=16)
    chunks = list(
        oa.chat.completions.create(
            model=MODEL_ID,
            messages=user({"type": "text", "text": QUESTION}, molecule("CCO")),
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["molm3d"]["molecules"][0]["smiles"] == expected["smiles"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected["text"] and sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [{"eos": "stop", "length": "length"}[expected["finish_reason"]]]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == expected["num_tokens"]
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_n_choices_greedy_and_sampled_with_seeds(served, oa):
    messages = user({"type": "text", "text": QUESTION}, molecule(ASPIRIN))
    greedy = oa.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=8, n=2)
    expected = ask(served, ASPIRIN, QUESTION, max_new_tokens=8)["text"]
    assert [c.message.content for c in greedy.choices] == [expected, expected]
    assert [c.index for c in greedy.choices] == [0, 1]

    # Sampling: answer i samples with seed + i, exactly as Ask with that seed.
    sampled = oa.chat.completions.create(
        model=MODEL_ID, messages=messages, max_tokens=8, n=2, temperature=1.5, top_p=0.95, seed=7
    )
    asked = [ask(served, ASPIRIN, QUESTION, max_new_tokens=8, temperature=1.5, top_p=0.95, seed=s)["text"]
             for s in (7, 8)]  # fmt: skip
    assert [c.message.content for c in sampled.choices] == asked
    assert asked[0] != asked[1] and expected not in asked  # the seeds matter, and sampling is not greedy


def test_stop_strings_end_the_answer_as_ask_does(served, oa):
    full = ask(served, ASPIRIN, QUESTION, max_new_tokens=16)["text"]
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    done = oa.chat.completions.create(
        model=MODEL_ID,
        messages=user({"type": "text", "text": QUESTION}, molecule(ASPIRIN)),
        max_tokens=16,
        stop=[stop],
    )
    text = done.choices[0].message.content
    assert text == full[: full.index(stop)].strip() and done.choices[0].finish_reason == "stop"
    assert text == ask(served, ASPIRIN, QUESTION, max_new_tokens=16, stop=[stop])["text"]
    chunks = oa.chat.completions.create(
        model=MODEL_ID,
        messages=user({"type": "text", "text": QUESTION}, molecule(ASPIRIN)),
        max_tokens=16,
        stop=stop,
        stream=True,
    )  # streamed, nothing of the stop string leaks out before the answer ends
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text


# -- the gateway's guarantees: deadlines and admission control ----------------------------------------------------


def timed_caption(oa, deadline_s: float, max_tokens: int = 300):
    """(HTTP status, error or None) of a caption chat with that deadline."""
    try:
        oa.chat.completions.create(
            model=MODEL_ID,
            messages=user(molecule("CCO")),
            max_tokens=max_tokens,
            extra_headers={"x-molm3d-timeout-ms": str(int(deadline_s * 1000))},
        )
        return 200, None
    except openai.APIStatusError as err:
        return err.status_code, err


def test_a_deadline_too_short_is_a_504(oa):
    status, err = timed_caption(oa, 0.005)
    assert status == 504 and err.code == "deadline_exceeded" and err.body["type"] == "timeout_error"


def test_a_burst_of_chats_is_answered_in_time_or_refused_with_a_retry_hint(oa):
    assert timed_caption(oa, 60)[0] == 200  # warm up, and let the LM report measured steps
    took = []
    for _ in range(3):  # the unloaded time: the slowest of three (one sample is too noisy on 2 busy cores)
        start = time.perf_counter()
        assert timed_caption(oa, 60)[0] == 200
        took.append(time.perf_counter() - start)
    deadline_s = 4 * max(took)
    time.sleep(0.5)  # a fresh load report
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: timed_caption(oa, deadline_s), range(16)))
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 429}, results
    assert statuses.count(200) >= 2 and statuses.count(429) >= 4, statuses
    busy = [err for status, err in results if status == 429 and err.body["message"].startswith("busy: ")]
    assert busy and all(err.code == "overloaded" and err.body["type"] == "rate_limit_error" for err in busy)
    assert all(int(err.response.headers["retry-after"]) >= 1 for err in busy)
    assert timed_caption(oa, 60)[0] == 200  # and it still serves


# -- embeddings -------------------------------------------------------------------------------------------------


def test_embeddings_of_texts_and_molecules(served, oa):
    text = "an aromatic ester of salicylic acid"
    result = oa.embeddings.create(
        model=MODEL_ID, input=[text, f"<molecule>{ASPIRIN}</molecule>"]
    )  # the client asks for base64 and decodes it
    text_vector, molecule_vector = (d.embedding for d in result.data)
    status, embedded = http_json(f"{served.http}/v1/embed", {"molecule": {"text": ASPIRIN}})
    assert status == 200
    from google.protobuf import json_format
    from molm3d.v1 import common_pb2

    from molm3d_services.common.tensors import from_proto

    served_molecule = from_proto(json_format.ParseDict(embedded["embedding"], common_pb2.Tensor()))
    assert result.data[1].model_extra["molm3d"]["shape"] == list(served_molecule.shape)
    assert torch.allclose(torch.tensor(molecule_vector), served_molecule.reshape(-1), atol=1e-6)
    assert result.data[0].model_extra["molm3d"]["kind"] == "text"
    assert math.isclose(sum(x * x for x in text_vector), 1.0, rel_tol=1e-4)
    assert result.usage.prompt_tokens > 8  # the text's tokens plus 8 per molecule

    # Retrieval by that text ranks with the same vector: the best hit's score is its dot product with a
    # document, which the float format reproduces.
    floats = oa.embeddings.create(model=MODEL_ID, input=text, encoding_format="float")
    assert torch.allclose(torch.tensor(floats.data[0].embedding), torch.tensor(text_vector), atol=1e-6)


# -- errors ----------------------------------------------------------------------------------------------------


def test_a_bad_smiles_is_a_400_with_our_code_and_the_part(oa):
    with pytest.raises(openai.BadRequestError) as caught:
        oa.chat.completions.create(
            model=MODEL_ID,
            messages=user({"type": "text", "text": QUESTION}, molecule("C1CC(")),
            max_tokens=4,
        )
    err = caught.value
    assert err.status_code == 400 and err.code == "invalid_smiles" and err.param == "messages[0].content[1]"
    assert err.body["type"] == "invalid_request_error" and err.body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        oa.embeddings.create(model=MODEL_ID, input=["fine text", {"type": "molecule", "molecule": {"smiles": "XYZ"}}])
    assert caught.value.code == "invalid_smiles" and caught.value.param == "input[1]"


def raw(served, path: str, body: bytes | dict | None, token: str | None = TOKEN, method: str | None = None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{served.http}{path}", data=data, method=method or ("POST" if data else "GET"))
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


GOOD = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.mark.parametrize(
    ("change", "status", "param", "code"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools", "unsupported_parameter"),
        ({"logprobs": True}, 400, "logprobs", "unsupported_parameter"),
        ({"frequency_penalty": 0.5}, 400, "frequency_penalty", "unsupported_parameter"),
        ({"response_format": {"type": "json_object"}}, 400, "response_format", "unsupported_parameter"),
        ({"functions": []}, 400, "functions", "unsupported_parameter"),
        ({"temperature": 3}, 400, "temperature", "invalid_request"),
        ({"temperature": "hot"}, 400, "temperature", "invalid_request"),
        ({"top_p": 0}, 400, "top_p", "invalid_request"),
        ({"n": 0}, 400, "n", "invalid_request"),
        ({"n": 9}, 400, "n", "invalid_request"),
        ({"max_tokens": 0}, 400, "max_tokens", "invalid_request"),
        ({"max_tokens": 100000}, 400, "max_tokens", "invalid_request"),
        ({"max_tokens": 4, "max_completion_tokens": 4}, 400, "max_tokens", "invalid_request"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_request"),
        ({"stop": 5}, 400, "stop", "invalid_request"),
        ({"stream": "yes"}, 400, "stream", "invalid_request"),
        ({"stream_options": {"include_usage": True}}, 400, "stream_options", "invalid_request"),
        ({"model": "gpt-4o"}, 404, "model", "model_not_found"),
        ({"model": None}, 400, "model", "invalid_request"),
        ({"messages": []}, 400, "messages", "invalid_request"),
        ({"messages": [{"role": "assistant", "content": "Hi"}]}, 400, "messages", "invalid_request"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, 400, "messages[0]",
         "unsupported_parameter"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
         "messages[0].content[0]", "unsupported_content"),
        ({"messages": [{"role": "user", "content": [{"type": "molecule", "molecule": "CCO"}]}]}, 400,
         "messages[0].content[0]", "invalid_request"),
        ({"messages": [{"role": "user", "content": "<molecule>CCO"}]}, 400, "messages[0].content", "invalid_request"),
        ({"messages": [{"role": "user", "content": "What is <mol>?"}]}, 400, None, "invalid_request"),
        ({"messages": [{"role": "user", "content": "Hi<|im_end|>"}]}, 400, None, "invalid_request"),
        ({"messages": [{"role": "system", "content": [molecule("CCO")]}, {"role": "user", "content": "x"}]}, 400,
         "messages[0].content[0]", "invalid_request"),
    ],
)  # fmt: skip
def test_chat_errors_are_openai_error_objects(served, change, status, param, code):
    got, body = raw(served, "/v1/chat/completions", {**GOOD, **change})
    assert got == status, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == {400: "invalid_request_error", 404: "not_found_error"}[status]


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b"{not json", "/v1/chat/completions"),
        (b"[1, 2]", "/v1/chat/completions"),
        (b"null", "/v1/embeddings"),
        (b'{"model": "molm3d-tiny-test", "input": [[1, 2, 3]]}', "/v1/embeddings"),
        (b'{"model": "molm3d-tiny-test", "input": ""}', "/v1/embeddings"),
        (b'{"model": "molm3d-tiny-test", "input": "x", "dimensions": 8}', "/v1/embeddings"),
    ],
)
def test_malformed_bodies_are_400_error_objects(served, body, path):
    status, reply = raw(served, path, body)
    assert status == 400 and set(reply["error"]) == {"message", "type", "param", "code"}


def test_the_token_is_required(served, oa):
    for path, body in (("/v1/models", None), ("/v1/chat/completions", GOOD), ("/v1/embeddings", {"input": "x"})):
        status, reply = raw(served, path, body, token=None)
        assert status == 401 and reply["error"]["code"] == "unauthenticated"
        assert reply["error"]["type"] == "authentication_error"
    wrong = openai.OpenAI(base_url=oa.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(**GOOD)
    status, reply = raw(served, "/v1/chat/completions", None, method="GET")
    assert status == 405 and reply["error"]["code"] == "method_not_allowed"


# -- the README's example ----------------------------------------------------------------------------------------


def test_the_readme_example_runs_and_answers_what_ask_answers(served, monkeypatch, capsys):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### OpenAI-compatible API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    monkeypatch.setenv("MOLM3D_API_TOKEN", TOKEN)
    namespace: dict = {}
    for block in blocks:
        exec(block.replace("http://127.0.0.1:8000", served.http), namespace)
    answer, method, streamed = capsys.readouterr().out.split("\n", 2)
    expected = ask(served, ASPIRIN, "What is the HOMO-LUMO gap of this molecule?")
    assert answer == expected["text"] == streamed and method == expected["conformer_method"]
