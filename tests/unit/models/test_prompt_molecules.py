"""Prompts with 0, 1 or more molecules, earlier turns and a system line, through the model: the
placeholders of every molecule receive that molecule's tokens, in order."""

from __future__ import annotations

import re

import pytest
import torch

from molm3d_core.models import DecodingOptions
from molm3d_core.models.continuous import Sequence, decode_all
from molm3d_core.prompts import build_prompt


def test_model_prompt_keeps_its_single_molecule_form(tiny_model):
    c = tiny_model.config
    one = build_prompt(c.prompt_template, "What is it?", "CCO", tiny_model.num_query_tokens, c.max_smiles_chars)
    assert tiny_model.prompt("What is it?", "CCO") == tiny_model.prompt("What is it?", ["CCO"]) == one
    chat = tiny_model.prompt("And then?", ["CCO", "CCN"], history=[("What is it?", "Ethanol.")], system="Be brief.")
    assert chat.startswith("Be brief.\n") and chat.count("<mol>") == 2 * tiny_model.num_query_tokens


@pytest.mark.parametrize("token", ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<mol>"])
def test_user_text_may_not_hold_the_tokenizers_special_tokens(tiny_model, token):
    assert token in tiny_model.lm.tokenizer.all_special_tokens  # read as one control token, not as text
    for kwargs, field in (
        ({"instruction": f"What is it?{token}"}, "instruction"),
        ({"system": f"{token}system"}, "system"),
        ({"history": [("q", f"a {token}")]}, r"history\[0\].answer"),
    ):
        args = {"instruction": "What is it?", "smiles": ["CCO"], **kwargs}
        with pytest.raises(ValueError, match=f"^{field} may not contain {re.escape(token)}$"):
            tiny_model.prompt(args.pop("instruction"), args.pop("smiles"), **args)
    assert "<|endoftext|>" not in tiny_model.prompt("What is it? <|endoftext", ["CCO"])  # a partial one is text


def test_each_molecule_fills_its_own_placeholders_in_order(tiny_model):
    lm, q = tiny_model.lm, tiny_model.num_query_tokens
    prompts = [tiny_model.prompt("Compare them.", ["CCO", "c1ccccc1", "CCN"]), tiny_model.prompt("Water?", [])]
    mol = torch.arange(3 * q * lm.hidden_size, dtype=torch.float32).view(3, q, lm.hidden_size)
    with torch.no_grad():
        three, none = lm.prompt_embeds(prompts, mol)  # (3, Q, H): the first prompt's three molecules
        plain = lm.model.get_input_embeddings()(lm.tokenize(prompts[:1]).input_ids[0])
    ids = lm.tokenize(prompts[:1]).input_ids[0]
    where = ids.eq(lm.mol_token_id)
    assert int(where.sum()) == 3 * q
    torch.testing.assert_close(three[where], mol.view(3 * q, -1))
    torch.testing.assert_close(three[~where], plain[~where])
    assert none.shape[0] == len(lm.tokenize(prompts[1:]).input_ids[0])
    with pytest.raises(ValueError, match="24 <mol> placeholders but 16"):
        lm.prompt_embeds(prompts, mol[:2])


@pytest.mark.parametrize("mol", [None, "empty"], ids=["none", "0xQxH"])
def test_a_prompt_without_molecules_is_answered(tiny_model, mol):
    lm = tiny_model.lm
    prompt = tiny_model.prompt("What is water?", [])
    assert prompt == "Question: What is water?\nAnswer:"
    tokens = None if mol is None else torch.zeros(0, tiny_model.num_query_tokens, lm.hidden_size)
    (embeds,) = lm.prompt_embeds([prompt], tokens)
    (g,) = decode_all(lm, [Sequence(embeds, DecodingOptions(max_new_tokens=4))])
    assert g.num_tokens >= 1 and g.finish_reason in ("eos", "length")
    assert lm.generate([prompt], tokens, DecodingOptions(max_new_tokens=4)) == [g]
