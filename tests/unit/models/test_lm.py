"""The LM wrapper on the real packaged SmolLM2: splicing, EOS, padding sides, batch invariance."""

from __future__ import annotations

import pytest
import torch

from molm3d_core.decoding import default_decoding
from molm3d_core.models import DecodingOptions, LMConfig, MolLM
from molm3d_core.prompts import MOL_TOKEN
from tests.helpers import molecule_batch


@pytest.fixture(scope="module")
def lm(small_model):
    return small_model[0].lm


def test_placeholder_count_must_match_molecule_embeddings(lm):
    batch = lm.tokenize([f"Molecule {MOL_TOKEN * 8} here", f"Another {MOL_TOKEN * 8}"])
    hidden = lm.hidden_size
    lm.embed(batch.input_ids, torch.zeros(2, 8, hidden))  # exact count: fine
    with pytest.raises(ValueError, match="16 <mol> placeholders but 14"):
        lm.embed(batch.input_ids, torch.zeros(2, 7, hidden))
    with pytest.raises(ValueError, match="16 <mol> placeholders but 0"):
        lm.embed(batch.input_ids, None)


def test_molecule_embeddings_land_on_placeholders_in_order(lm):
    batch = lm.tokenize([f"short {MOL_TOKEN * 2}", f"a longer prompt before {MOL_TOKEN * 2} and after"])
    mol = torch.arange(4 * lm.hidden_size, dtype=torch.float32).view(2, 2, lm.hidden_size)
    with torch.no_grad():
        out = lm.embed(batch.input_ids, mol)
        plain = lm.model.get_input_embeddings()(batch.input_ids)
    where = batch.input_ids.eq(lm.mol_token_id)
    torch.testing.assert_close(out[where], mol.view(4, -1))
    torch.testing.assert_close(out[~where], plain[~where])


def test_prompts_are_left_padded_and_training_rows_right_padded(lm):
    prompts = lm.tokenize(["Q: one?", "Q: a much longer question here?"])
    assert prompts.attention_mask[:, -1].tolist() == [1, 1]  # generation: every row ends on a real token
    assert prompts.attention_mask[0, 0] == 0
    batch = lm.tokenize(["Q: one?", "Q: a much longer question here?"], targets=["1", "yes it is"])
    eos = lm.tokenizer.eos_token_id
    # training: every row starts on a real token, so no query position is fully masked
    assert batch.attention_mask[:, 0].tolist() == [1, 1]
    assert batch.input_ids[0, -1] == lm.tokenizer.pad_token_id and batch.attention_mask[0, -1] == 0
    assert (batch.labels[batch.attention_mask == 0] == -100).all()
    for row in range(2):
        labelled = batch.labels[row][batch.labels[row] != -100]
        assert labelled[-1] == eos
        assert lm.tokenizer.decode(labelled[:-1]).strip() == ["1", "yes it is"][row]


def test_training_loss_of_a_padded_batch_is_the_token_weighted_mean_of_its_rows(lm):
    prompts, targets = ["Q: one?", "Q: a much longer question here, with more words?"], [" 1", " yes it is, surely"]
    with torch.no_grad():
        batch = lm.tokenize(prompts, targets)
        together = lm.loss(batch, None)
        rows = [lm.tokenize([p], [t]) for p, t in zip(prompts, targets, strict=True)]
        counts = [int((r.labels != -100).sum()) for r in rows]
        alone = sum(lm.loss(r, None) * n for r, n in zip(rows, counts, strict=True)) / sum(counts)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


# With a repetition penalty, transformers' batched generate leaves each left-padded row's first k
# generated tokens (k = its padding) unpenalised (it reads the padding length as a prompt length), so a
# caption depended on its batch neighbours; the continuous decoder penalises every generated token.
@pytest.mark.parametrize(
    "decoding",
    [DecodingOptions(max_new_tokens=12), default_decoding("caption", max_new_tokens=16)],
    ids=["answer-default", "caption-default"],
)
def test_answer_is_identical_alone_and_in_a_batch(small_model, decoding):
    model, _ = small_model
    smiles = ["CC(=O)Oc1ccccc1C(=O)O", "CCO", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C"]
    questions = ["What is this molecule?", "Describe it in one sentence, please, with its main functional group.", "?"]
    with torch.no_grad():
        batch = model.ask(molecule_batch(smiles), smiles, questions, decoding)
        alone = [model.ask(molecule_batch([s]), [s], [q], decoding)[0] for s, q in zip(smiles, questions, strict=True)]
    assert [g.text for g in batch] == [g.text for g in alone]
    assert len({g.text for g in batch}) > 1  # different prompts, different answers: outputs are not constant


def test_generation_stops_at_eos(lm):
    chat = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hello."}], tokenize=False, add_generation_prompt=True
    )
    long = lm.generate([chat], None, DecodingOptions(max_new_tokens=60))[0]
    assert long.finish_reason == "eos" and 0 < long.num_tokens < 60 and long.text
    short = lm.generate([chat], None, DecodingOptions(max_new_tokens=2))[0]
    assert short.finish_reason == "length" and short.num_tokens == 2


def test_lora_learns_an_eos_terminated_answer():
    """A few LoRA steps on one example: the model then answers it and stops (reference defect 2)."""
    torch.manual_seed(0)
    lm = MolLM(LMConfig())
    prompt, target = "Molecule: CCO\nQuestion: What is the HOMO?\nAnswer:", " -7.123 eV"
    batch = lm.tokenize([prompt], targets=[target])
    params = [p for p in lm.parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in lm.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(25):
        loss = lm.loss(batch, None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    gen = lm.generate([prompt], None, DecodingOptions(max_new_tokens=30))[0]
    assert gen.text == target.strip() and gen.finish_reason == "eos"
