"""Shared helpers for the stage-1/stage-2 tests: tricky strings and stage-0-format records."""
from __future__ import annotations

import random
from pathlib import Path

import orjson

# Strings that stress a byte-level trie tokenizer: multi-byte UTF-8, grapheme clusters that span
# several code points, whitespace variants, empties and very long runs.
TRICKY_STRINGS = [
    "",
    " ",
    "  ",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Document [3] Question: who wrote it? Answer: nobody.",
    "北京是中华人民共和国的首都。",
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 문장입니다.",
    "family 👨‍👩‍👧‍👦 and 👩🏽‍💻 with skin tone",
    "flags 🇺🇸🇫🇷🇯🇵 🏳️‍🌈",
    "emoji run 😀😃😄😁😆😅😂🤣",
    "café naïve résumé coöperate Ångström",
    "cafe\u0301 combining acute, a\u0308",
    "non\u00a0breaking\u00a0space and narrow\u202fnbsp",
    "tabs\tand\t\ttabs",
    "new\nlines\n\nand\r\nCRLF\r",
    "zero\u200bwidth\u200djoiner\ufeffBOM",
    "العربية مكتوبة من اليمين",
    "עברית גם כן",
    "हिन्दी देवनागरी",
    "math ∑∫√∞ ≠ ≤ ≥ and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "CJK ext B: 𠀀𠀁𠀂",
    "\x00\x01\x02 control \x7f chars",
    "a" * 5000,
    "supercalifragilisticexpialidocious" * 200,
    "数" * 3000,
    "👍" * 500,
    "(Title: Foo (band)) Foo is a band from São Paulo, formed in 1999.",
    "   leading and trailing spaces   ",
    "12345678901234567890 3.14159 1,000,000 -42 +7e10",
    "<html><body>tags &amp; entities</body></html>",
    "mixed 中文 English 😀 ñ\ttab\nnewline\u00a0nbsp",
]


def random_text(rng: random.Random, n_words: int) -> str:
    pool = [
        "the", "river", "song", "album", "released", "1999", "by", "Émile", "São", "Paulo",
        "北京", "数据", "😀", "👨‍👩‍👧", "🇯🇵", "naïve", "—", "(Title:", "Foo)", "Question:",
        "Document", "[3]", "a\u00a0b", "tab\there", "line\nbreak", "", "x" * 40,
    ]
    return " ".join(rng.choice(pool) for _ in range(n_words))


def make_record(rng: random.Random, line_number: int, n_negatives: int | None = None,
                doc_words: tuple[int, int] = (0, 60)) -> dict:
    """A record in stage 0's output format with random (tricky) text."""
    k = n_negatives if n_negatives is not None else rng.randint(1, 4)
    negatives = [random_text(rng, rng.randint(*doc_words)) for _ in range(k)]
    n_docs = k + 1 + rng.randint(0, 10)
    ids = rng.sample(range(1, n_docs + 1), k + 1)
    return {
        "question": random_text(rng, rng.randint(0, 12)),
        "answer": random_text(rng, rng.randint(0, 3)),
        "long_answer": random_text(rng, rng.randint(0, 30)),
        "positive": random_text(rng, rng.randint(*doc_words)),
        "negative": negatives[0],
        "negatives": negatives,
        "gold_id": ids[0],
        "negative_ids": ids[1:],
        "num_documents": n_docs,
        "line_number": line_number,
    }


def make_records(n: int, seed: int = 0, **kw) -> list[dict]:
    rng = random.Random(seed)
    return [make_record(rng, i, **kw) for i in range(n)]


def write_jsonl(path: Path, lines: list) -> Path:
    """Write dicts as JSON lines and bytes as they are (for broken lines)."""
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else orjson.dumps(line) + b"\n")
    return path
