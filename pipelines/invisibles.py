"""Characters that render as nothing or as a blank: one definition for the prompt key (``pipelines.splits.assign``)
and the ingest's ``empty_prompt`` rule (``pipelines.ingest.parse``). No Dagster, no I/O."""
from __future__ import annotations

import regex

# Removed from a key: default-ignorable code points and every other format character (Cf: interlinear
# annotation marks, Egyptian hieroglyph format controls, Arabic number signs, ...), which render as
# nothing or as a mark on their neighbour.
INVISIBLE = regex.compile(r"[\p{Default_Ignorable_Code_Point}\p{Cf}]+")
# Read as a space: characters that render as a blank but are not whitespace (Braille pattern blank, the
# Hangul fillers, the musical null notehead's space). Read before INVISIBLE runs: the fillers are default-ignorable.
BLANK = regex.compile("[\u2800\u3164\uffa0\u115f\u1160\U0001D159]")


def renders_empty(text: str) -> bool:
    """Whether ``text`` shows nothing: only whitespace, blanks (:data:`BLANK`) and invisibles (:data:`INVISIBLE`)."""
    if text.isascii():
        return not text.strip()
    return not INVISIBLE.sub("", BLANK.sub(" ", text)).strip()
