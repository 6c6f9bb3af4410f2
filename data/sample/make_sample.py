#!/usr/bin/env python3
"""Build the demo sample corpus ``wordnet_glosses.jsonl.gz`` from Princeton WordNet 3.0.

How to rerun (Debian/Ubuntu; standard library only, Python 3.11+):

    apt-get update && apt-get install -y wordnet-base
    python3 data/sample/make_sample.py

Options: ``--wordnet-dir`` (default ``/usr/share/wordnet``, the Debian package's
database directory), ``--output`` (default ``wordnet_glosses.jsonl.gz`` next to
this script), ``--size`` (default 12000 entries).  The output is byte-for-byte
reproducible for the same WordNet files and options (stable SHA-256 selection,
sorted output, gzip header with mtime=0 and no file name).

Each output line is one JSON object with the fields:

    id       "<p>-<offset>": p is n/v/a/r (the data file: data.noun, data.verb,
             data.adj incl. satellite adjectives, data.adv) and offset is the
             8-digit synset offset, e.g. "n-02084071"
    text     the gloss definition only: example sentences in quotes removed,
             whitespace collapsed; glosses under 4 words are skipped
    lemma    the synset's first lemma, underscores replaced by spaces
             (adjective syntactic markers such as "(a)", "(p)", "(ip)" removed)
    pos      "noun" | "verb" | "adjective" | "adverb"
    lexname  lexicographer file name, e.g. "noun.animal", from the
             ``lexnames`` file in the WordNet directory when present, else the
             table from lexnames(5WN) built in below

Selection: the eligible entries of each part of speech are ordered by the
SHA-256 of their id and the first ``round(size * n_pos / n_all)`` are kept, so
the subset is deterministic and proportional across parts of speech.  The
output is sorted by part of speech (noun, verb, adjective, adverb) then offset.

WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.
See LICENSE-WordNet.txt beside this script for the licence.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# data file -> (id prefix, pos name); order is the output order.
PARTS = (
    ("data.noun", "n", "noun"),
    ("data.verb", "v", "verb"),
    ("data.adj", "a", "adjective"),
    ("data.adv", "r", "adverb"),
)

# lexnames(5WN), WordNet 3.0: file number -> lexicographer file name.
BUILTIN_LEXNAMES = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)

MIN_WORDS = 4
ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
WS = re.compile(r"\s+")


def load_lexnames(wordnet_dir: Path) -> dict[int, str]:
    path = wordnet_dir / "lexnames"
    if path.is_file():
        table = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                table[int(parts[0])] = parts[1]
        return table
    return dict(enumerate(BUILTIN_LEXNAMES))


def definition_only(gloss: str) -> str:
    """The definition part of a WordNet gloss, without the quoted examples.

    Examples follow the definition after a separator (";", ":" or ",") and an
    opening double quote.  Only separators outside parentheses count, so
    quotations that are part of the definition, e.g. '(e.g., "he said ...")',
    are kept.
    """
    depth = 0
    cut = len(gloss)
    for i, ch in enumerate(gloss):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch in ";:," and depth == 0 and gloss[i + 1 :].lstrip().startswith('"'):
            cut = i
            break
    if gloss.lstrip().startswith('"'):  # a gloss that is only an example
        cut = 0
    text = WS.sub(" ", gloss[:cut]).strip().rstrip(";:,").strip()
    if text.count('"') % 2 == 1 and text.endswith('"'):  # stray closing quote
        text = text[:-1].rstrip()
    return text


def parse_data_file(path: Path, prefix: str, pos: str, lexnames: dict[int, str]):
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("  "):  # licence header lines
                continue
            head, sep, gloss = line.partition(" | ")
            if not sep:
                continue
            fields = head.split()
            offset, lex_filenum, w_cnt = fields[0], int(fields[1]), int(fields[3], 16)
            if w_cnt < 1:
                continue
            lemma = ADJ_MARKER.sub("", fields[4]).replace("_", " ")
            text = definition_only(gloss)
            if len(text.split()) < MIN_WORDS:
                continue
            yield {
                "id": f"{prefix}-{offset}",
                "text": text,
                "lemma": lemma,
                "pos": pos,
                "lexname": lexnames[lex_filenum],
            }


def stable_key(entry_id: str) -> str:
    return hashlib.sha256(entry_id.encode("utf-8")).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"))
    ap.add_argument("--output", type=Path, default=HERE / "wordnet_glosses.jsonl.gz")
    ap.add_argument("--size", type=int, default=12000)
    args = ap.parse_args(argv)

    missing = [n for n, _, _ in PARTS if not (args.wordnet_dir / n).is_file()]
    if missing:
        print(
            f"missing WordNet data files in {args.wordnet_dir}: {missing}; "
            "install them with: apt-get install -y wordnet-base",
            file=sys.stderr,
        )
        return 2

    lexnames = load_lexnames(args.wordnet_dir)
    eligible = {
        pos: list(parse_data_file(args.wordnet_dir / name, prefix, pos, lexnames)) for name, prefix, pos in PARTS
    }
    total = sum(len(v) for v in eligible.values())
    selected = []
    for _, _, pos in PARTS:
        entries = eligible[pos]
        quota = round(args.size * len(entries) / total)
        chosen = sorted(entries, key=lambda e: stable_key(e["id"]))[:quota]
        chosen.sort(key=lambda e: e["id"])
        selected.extend(chosen)
        print(f"{pos:10s} eligible {len(entries):6d}  selected {len(chosen):6d}")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    with (
        args.output.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz,
    ):
        for entry in selected:
            gz.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
    size = args.output.stat().st_size
    print(f"wrote {len(selected)} entries to {args.output} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
