"""Reader for the WordNet 3.0 database files (Debian package ``wordnet-base``).

Each synset line of ``data.{noun,verb,adj,adv}`` (format: wndb(5WN)) gives the synset offset, its
lexicographer file number (the 45 coarse classes such as noun.animal, verb.motion), its lemmas and
its gloss: a definition followed by zero or more quoted example sentences, separated by "; ".
Used as a real, offline text corpus (language modelling) and retrieval task (adapter benchmark).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mrl.errors import MRLError

WORDNET_DIR = Path("/usr/share/wordnet")
POS_FILES = {"noun": "data.noun", "verb": "data.verb", "adj": "data.adj", "adv": "data.adv"}
# lexnames(5WN): lexicographer file number -> name.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_EXAMPLE = re.compile(r'"([^"]+)"')


@dataclass(frozen=True)
class Synset:
    offset: int
    pos: str
    lexname: str
    lemmas: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]


def _parse_line(line: str, pos: str) -> Synset:
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    offset, lex_filenum, w_cnt = int(fields[0]), int(fields[1]), int(fields[3], 16)
    lemmas = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(w_cnt))
    gloss = gloss.strip()
    examples = tuple(e.strip() for e in _EXAMPLE.findall(gloss))
    definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
    return Synset(offset, pos, LEXNAMES[lex_filenum], lemmas, definition, examples)


def load_synsets(wordnet_dir: str | Path | None = None, pos: tuple[str, ...] = tuple(POS_FILES)) -> list[Synset]:
    """All synsets of the given parts of speech, in file order (deterministic).

    Raises:
        MRLError: the WordNet files are missing (install Debian's ``wordnet-base``).
    """
    root = Path(wordnet_dir) if wordnet_dir is not None else WORDNET_DIR
    out: list[Synset] = []
    for p in pos:
        if p not in POS_FILES:
            raise MRLError(f"unknown part of speech {p!r}; choose from {', '.join(POS_FILES)}")
        path = root / POS_FILES[p]
        if not path.is_file():
            raise MRLError(f"WordNet file {path} not found; on Debian: apt-get install wordnet-base")
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or not line.strip():
                    continue  # licence header lines start with two spaces
                out.append(_parse_line(line, p))
    if not out:
        raise MRLError(f"no synsets found under {root}")
    return out
