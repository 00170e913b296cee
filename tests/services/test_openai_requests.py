"""Chat and embedding requests -> the gateway's Prompt, decoding and inputs (no stack: the parsing alone)."""

from __future__ import annotations

import pytest

from molm3d_core.prompts import CAPTION_INSTRUCTION
from molm3d_services.gateway.openai_requests import ApiError, parse_chat, parse_embeddings

XYZ = "3\n\nC 0 0 0\nO 1 0 0\nH 2 0 0\n"


def chat(messages, **params):
    return parse_chat({"model": "m", "messages": messages, **params})


def test_a_conversation_becomes_molecules_history_system_and_question():
    parsed = chat(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use eV."}]},
            {"role": "user", "content": [{"type": "molecule", "molecule": {"smiles": "CCO", "id": "e"}},
                                         {"type": "text", "text": "Is it polar?"}]},
            {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": f"And <molecule format=\"xyz\">{XYZ}</molecule> this?"},
            {"role": "user", "content": "Compare them."},
        ]
    )  # fmt: skip
    prompt = parsed.prompt
    assert prompt.system == "Be brief.\nUse eV."
    assert prompt.history == (("Is it polar?", "Yes."),)
    assert prompt.instruction == "And this?\nCompare them."  # consecutive user messages are one turn
    assert [(m.id, m.format, m.text) for m in prompt.molecules] == [
        ("e", "smiles", "CCO"),
        ("", "xyz", "3\n\nC 0 0 0\nO 1 0 0\nH 2 0 0"),
    ]
    assert parsed.molecule_params == ["messages[2].content[0]", "messages[4].content"]
    assert parsed.task == "ask" and parsed.n == 1 and not parsed.stream


def test_a_molecule_alone_is_a_caption_and_a_greeting_is_context():
    parsed = chat(
        [
            {"role": "assistant", "content": "Hello, send me a molecule."},
            {"role": "user", "content": [{"type": "molecule", "molecule": {"smiles": "c1ccccc1"}}]},
        ]
    )
    assert parsed.task == "caption" and parsed.prompt.instruction == CAPTION_INSTRUCTION
    assert parsed.prompt.system == "Hello, send me a molecule." and parsed.prompt.history == ()


def test_decoding_parameters_map_onto_decoding_options():
    d = chat([{"role": "user", "content": "x"}], max_completion_tokens=7, temperature=0.7, top_p=0.9, seed=3,
             stop="\n", repetition_penalty=1.3, no_repeat_ngram_size=0, n=3, user="u1",
             frequency_penalty=0, logprobs=False, tools=None).decoding  # fmt: skip
    assert (d.max_new_tokens, d.seed, list(d.stop), d.no_repeat_ngram_size) == (7, 3, ["\n"], 0)
    assert abs(d.temperature - 0.7) < 1e-6 and abs(d.top_p - 0.9) < 1e-6 and abs(d.repetition_penalty - 1.3) < 1e-6
    unset = chat([{"role": "user", "content": "x"}]).decoding
    assert not unset.HasField("seed") and unset.temperature == 0 and not unset.HasField("no_repeat_ngram_size")


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "user", "content": 5}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0]"),
        ([{"role": "user", "content": [{"type": "molecule", "molecule": {"smiles": "C", "text": "C"}}]}],
         "messages[0].content[0]"),
        ([{"role": "user", "content": [{"type": "molecule", "molecule": {"smiles": "C", "charge": 1}}]}],
         "messages[0].content[0]"),
        ([{"role": "user", "content": '<molecule colour="red">C</molecule>'}], "messages[0].content"),
        ([{"role": "assistant", "content": "<molecule>C</molecule>"}, {"role": "user", "content": "x"}],
         "messages[0].content"),
        ([{"role": "user", "content": "   "}], "messages[0]"),
        (["hello"], "messages[0]"),
        ([{"role": "robot", "content": "x"}], "messages[0].role"),
        ([{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}], "messages[0]"),
    ],
)  # fmt: skip
def test_bad_messages_name_their_param(messages, param):
    with pytest.raises(ApiError) as caught:
        chat(messages)
    assert caught.value.param == param and caught.value.status == 400


def test_embedding_inputs_are_texts_or_molecules():
    model, fmt, queries = parse_embeddings(
        {
            "model": "m",
            "input": ["a text", "<molecule>CCO</molecule>", {"type": "molecule", "molecule": {"smiles": "N"}}],
        }
    )
    assert (model, fmt, queries[0]) == ("m", "float", "a text")
    assert [(q.format, q.text) for q in queries[1:]] == [("smiles", "CCO"), ("smiles", "N")]
    for bad, param in (({"input": []}, "input"), ({"input": [[1, 2]]}, "input[0]"),
                       ({"input": ["x <molecule>C</molecule>"]}, "input[0]"),
                       ({"input": "x", "dimensions": 4}, "dimensions"),
                       ({"input": "x", "encoding_format": "int8"}, "encoding_format")):  # fmt: skip
        with pytest.raises(ApiError) as caught:
            parse_embeddings({"model": "m", **bad})
        assert caught.value.param == param
