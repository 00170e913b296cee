"""The packaged WordNet 3.0: normalised once into the cache and read by nltk with consistent offsets."""

from __future__ import annotations

from molm3d_core.evaluation import load_wordnet, wordnet_available
from molm3d_core.evaluation.wordnet import wordnet_dir


def test_wordnet_copy_is_lf_normalised(tmp_path, monkeypatch):
    monkeypatch.setenv("MOLM3D_CACHE_DIR", str(tmp_path))
    assert wordnet_available()
    root = wordnet_dir()  # raises if any synset offset is inconsistent
    assert root.is_relative_to(tmp_path)
    assert b"\r\n" not in (root / "data.verb").read_bytes()
    assert wordnet_dir() == root  # second call reuses the copy


def test_reader_finds_synsets_across_parts_of_speech():
    wn = load_wordnet()
    assert wn.get_version() == "3.0"
    assert "automobile" in {lemma.name() for s in wn.synsets("car") for lemma in s.lemmas()}
    assert wn.synsets("run", pos="v")  # a verb offset: broken by CRLF line endings before normalising
