"""Readers of the packaged sources (qm9pack CSVs, c3p metadata) and the ChEBI texts."""

from __future__ import annotations

import itertools

import pytest

from molm3d_core.data import HARTREE_TO_EV, ChebiClass, ChebiEntry, read_c3p, read_qm9
from molm3d_core.data.chebi import article, caption, classes_answer, first_sentence, identity_answer, most_specific


@pytest.fixture(scope="module")
def c3p():
    return read_c3p()


def test_qm9_first_molecules() -> None:
    methane, ammonia, water, acetylene = itertools.islice(read_qm9(), 4)
    assert (methane.mol_id, methane.smiles, methane.symbols) == ("qm9:000001", "C", ("C",))
    assert methane.coords == ((-0.013, 1.086, 0.008),)  # heavy atoms only, Å, 3 decimals
    assert methane.homo == pytest.approx(-0.3877 * HARTREE_TO_EV)
    assert methane.gap == pytest.approx(0.5048 * HARTREE_TO_EV)
    assert methane.energy == pytest.approx((-40.47893 - 0.044749) * HARTREE_TO_EV)
    assert acetylene.symbols == ("C", "C") and len(acetylene.coords) == 2
    assert [m.index for m in (ammonia, water)] == [2, 3]


def test_qm9_limit_reads_lazily() -> None:
    assert len(list(read_qm9(limit=25))) == 25


def test_c3p_classes_and_molecules(c3p) -> None:
    classes, entries = c3p
    assert len(classes) == 343
    assert classes["CHEBI:26493"].name == "quinic acid"
    assert classes["CHEBI:26493"].definition == "A cyclitol carboxylic acid."
    assert len(entries) > 10_000
    assert 6_000 < sum(1 for e in entries if e.class_ids) < len(entries)
    assert len({e.smiles for e in entries}) == len(entries)
    for entry in entries[:500]:  # classes are closed under the parents among the c3p classes
        for cid in entry.class_ids:
            assert all(p in entry.class_ids for p in classes[cid].parents if p in classes)


def _toy_classes() -> dict[str, ChebiClass]:
    return {
        "C:1": ChebiClass("C:1", "steroid", "Any of naturally occurring compounds. More text follows.", ()),
        "C:2": ChebiClass(
            "C:2", "11-oxo steroid", "Any oxo steroid that has an oxo substituent at position 11.", ("C:1",)
        ),
        "C:3": ChebiClass(
            "C:3", "epoxide", "Any cyclic ether in which the oxygen atom forms part of a 3-membered ring.", ()
        ),
        "C:4": ChebiClass("C:4", "organic sulfide", "Compounds having the structure RSR (R =/= H).", ()),
    }


def test_caption_names_specific_classes_and_defines_them() -> None:
    classes = _toy_classes()
    entry = ChebiEntry("C", "cortisone", ("C:1", "C:2", "C:3"))
    assert [c.name for c in most_specific(entry.class_ids, classes)] == ["11-oxo steroid", "epoxide"]
    assert caption(entry, classes) == (
        "cortisone is an 11-oxo steroid and an epoxide. "
        "An 11-oxo steroid is any oxo steroid that has an oxo substituent at position 11. "
        "An epoxide is any cyclic ether in which the oxygen atom forms part of a 3-membered ring."
    )
    assert classes_answer(entry, classes).endswith("classes: 11-oxo steroid; epoxide; steroid.")
    assert identity_answer(entry, classes) == "This molecule is cortisone. It is an 11-oxo steroid and an epoxide."
    other = ChebiEntry("C", "dimethyl sulfide", ("C:4",))
    assert caption(other, classes).endswith(
        "The class organic sulfide is defined as: Compounds having the structure RSR (R =/= H)."
    )


def test_molecule_without_classes_has_no_caption() -> None:
    entry = ChebiEntry("C", "Asperophiobolin I", ())
    assert caption(entry, _toy_classes()) is None and classes_answer(entry, _toy_classes()) is None
    assert identity_answer(entry, _toy_classes()) == "This molecule is Asperophiobolin I."


def test_articles_and_sentences() -> None:
    assert [article(n) for n in ("alkaloid", "steroid", "11-oxo steroid", "N-acylglycine", "8-hydroxy acid")] == [
        "an",
        "a",
        "an",
        "an",
        "an",
    ]
    assert first_sentence("Any acid, e.g. Acetic acid. Second sentence.") == "Any acid, e.g. Acetic acid."
