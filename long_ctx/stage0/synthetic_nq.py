"""Deterministic synthetic NQ multi-document rows, in the exact format of the real file.

All text is generated here (invented names, templated facts, pseudo-word filler); nothing is
copied from a dataset. Each record has one gold document that answers the question, near-miss
distractors that share the question's words but not the answer (and sometimes outrank the gold
under BM25), paraphrased golds that share fewer words, and unrelated passages. The bundled
sample (`data/make_sample.py`) and the benchmarks use it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator

import orjson

from long_ctx.stage0.nq_format import NQRecord, render_text

INSTRUCTION = (
    "Answer the question below using the search results that follow; some of them may be "
    "irrelevant, and exactly one of them is the source of the answer."
)

_SYLLABLES = [
    "bar", "vel", "dor", "an", "mir", "tesh", "ol", "qua", "rin", "sol", "ket", "lun", "o",
    "zen", "pra", "hal", "ost", "um", "cal", "dri", "ve", "nor", "ith", "ka", "mel", "sa",
    "tor", "ul", "fen", "gor", "is", "wyn", "ar", "be", "lo", "ma",
]
_ACCENTED = ["é", "ø", "ñ", "ü", "å", "ł", "ç", "ö"]
_FUNCTION = [
    "the", "of", "and", "in", "to", "a", "was", "is", "for", "on", "as", "by", "with", "it",
    "that", "from", "at", "its", "an", "which", "were", "also", "after", "during", "had",
]
_NATIONS = ["northern", "coastal", "highland", "island", "river", "valley", "eastern"]
_MATERIALS = ["stone", "iron", "timber", "brick", "granite", "steel"]
_JOBS = ["ferryman", "clockmaker", "cartographer", "beekeeper", "surveyor", "glassblower"]


@dataclass
class SyntheticRecord:
    record: NQRecord
    relation: str
    gold_style: str  # "direct" or "paraphrase"


class _Words:
    """Invented vocabulary with a Zipf-like frequency, so BM25 sees realistic term statistics."""

    def __init__(self, rng: random.Random, size: int = 6000) -> None:
        words = {
            "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(size)
        }
        self.words = sorted(words)
        rng.shuffle(self.words)
        self.cum = []
        total = 0.0
        for rank in range(len(self.words)):
            total += 1.0 / (rank + 1)
            self.cum.append(total)

    def filler(self, rng: random.Random, n_words: int) -> str:
        picks = rng.choices(self.words, cum_weights=self.cum, k=n_words)
        out = []
        for i, w in enumerate(picks):
            if rng.random() < 0.45:
                w = rng.choice(_FUNCTION)
            elif rng.random() < 0.01:
                w = w[:-1] + rng.choice(_ACCENTED)
            if i == 0 or out[-1].endswith("."):
                w = w.capitalize()
            r = rng.random()
            out.append(w + ("." if r < 0.07 else "," if r < 0.13 else ""))
        text = " ".join(out)
        return text if text.endswith(".") else text + "."


def _name(rng: random.Random, accent: float = 0.15) -> str:
    name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))
    if rng.random() < accent:
        i = rng.randrange(1, len(name))
        name = name[:i] + rng.choice(_ACCENTED) + name[i + 1:]
    return name.capitalize()


def _person(rng: random.Random) -> str:
    return f"{_name(rng)} {_name(rng)}"


def _year(rng: random.Random, avoid: set[str]) -> str:
    while True:
        y = str(rng.randint(1520, 1990))
        if y not in avoid:
            avoid.add(y)
            return y


# A fact: question, answer, long answer, gold passages (direct / paraphrase) and near misses
# (same question words, no answer). Each builder draws its own entities.
Fact = dict


def _bridge(rng: random.Random) -> Fact:
    x, river, town, p, p2 = _name(rng), _name(rng), _name(rng), _person(rng), _person(rng)
    years: set[str] = set()
    year, start, other, flood = (_year(rng, years) for _ in range(4))
    mat = rng.choice(_MATERIALS)
    la = (
        f"The {x} Bridge is a {mat} arch bridge across the {river} River at {town}. Work began "
        f"in {start}, and the bridge was completed in {year}; it was designed by {p} (who also "
        f"planned the harbour)."
    )
    return dict(
        question=f"when was the {x.lower()} bridge built",
        answer=year,
        long_answer=la,
        direct=(f"{x} Bridge", la),
        paraphrase=(town, f"{town} is a market town on the {river}. Its {mat} crossing, named "
                    f"for the {x} family, opened to traffic in {year} after three years of work "
                    f"directed by {p}."),
        near=[
            (f"{x} Bridge (disambiguation)", f"Tourists often visit the old {x} bridge, which was "
             f"built of {mat} and rebuilt after the flood of {flood}; the {x} bridge built for "
             f"the railway stands nearby."),
            (f"{_name(rng)} Bridge", f"The {_name(rng)} Bridge was built by {p2} to replace a "
             f"ferry across the {river} River; it was completed in {other}."),
        ],
    )


def _novel(rng: random.Random) -> Fact:
    book = f"The {_name(rng)} of {_name(rng)}"
    p, p2, director = _person(rng), _person(rng), _person(rng)
    years: set[str] = set()
    year, film = _year(rng, years), _year(rng, years)
    job = rng.choice(_JOBS)
    la = (
        f"{book} is a {year} novel by the {rng.choice(_NATIONS)} writer {p}. It follows a young "
        f"{job} through one winter; critics called it \"quiet, exact and strange\", and it was "
        f"translated into eleven languages."
    )
    return dict(
        question=f"who wrote the novel {book.lower()}",
        answer=p,
        long_answer=la,
        direct=(f"{book} (novel)", la),
        paraphrase=(p, f"{p} is remembered above all for {book}, a story about a {job} that "
                    f"the author published in {year} after a decade of drafts."),
        near=[
            (f"{book} (film)", f"{book} is a {film} film directed by {director}, adapted from "
             f"the novel of the same name; the novel was written over many years."),
            (f"{_name(rng)} (novel)", f"The novel {_name(rng)} was written by {p2}, who wrote "
             f"two further novels about a {job}."),
        ],
    )


def _capital(rng: random.Random) -> Fact:
    region, city, port, city2, region2 = (_name(rng) for _ in range(5))
    la = (
        f"{city} is the capital and largest city of {region}. It lies on a plateau above the "
        f"{port} estuary; the city became the capital in the 18th century, replacing the port."
    )
    return dict(
        question=f"what is the capital city of {region.lower()}",
        answer=city,
        long_answer=la,
        direct=(city, la),
        paraphrase=(f"Government of {region}", f"The parliament and ministries of {region} sit "
                    f"in {city}, on the plateau above the {port} estuary."),
        near=[
            (port, f"{port} is the largest port of {region}, though the city is not the capital "
             f"of {region}; ferries leave the city daily."),
            (city2, f"{city2} is the capital city of {region2}, a province east of {region}."),
        ],
    )


def _river(rng: random.Random) -> Fact:
    river, source, sea, other = (_name(rng) for _ in range(4))
    km = rng.randint(120, 2900)
    km2 = km + rng.randint(30, 400)
    la = (
        f"The {river} is a river that rises near {source} and flows into the {sea} Sea. It is "
        f"{km} kilometres long; its basin covers parts of three provinces."
    )
    return dict(
        question=f"how long is the {river.lower()} river",
        answer=f"{km} kilometres",
        long_answer=la,
        direct=(f"{river} River", la),
        paraphrase=(source, f"From its spring near {source}, the {river} runs {km} kilometres "
                    f"before reaching the {sea} Sea."),
        near=[
            (f"{river} River (disambiguation)", f"The {river} river is long and slow; boats on "
             f"the {river} river carry grain, and how long the journey takes depends on the "
             f"season."),
            (f"{other} River", f"The {other} River is {km2} kilometres long and is the longest "
             f"river of the region."),
        ],
    )


def _opera(rng: random.Random) -> Fact:
    opera = _name(rng)
    p, p2, librettist = _person(rng), _person(rng), _person(rng)
    years: set[str] = set()
    year = _year(rng, years)
    la = (
        f"{opera} is an opera in three acts composed by {p} to a libretto by {librettist}. It "
        f"premiered in {year}; the overture — often played alone — is its best-known part."
    )
    return dict(
        question=f"who composed the opera {opera.lower()}",
        answer=p,
        long_answer=la,
        direct=(f"{opera} (opera)", la),
        paraphrase=(p, f"{p} wrote the music of {opera}, whose premiere in {year} made the "
                    f"composer famous."),
        near=[
            (f"{opera} (disambiguation)", f"{opera} may refer to the opera {opera}, composed in "
             f"the romantic style, or to a village of the same name."),
            (f"{_name(rng)} (opera)", f"The opera {_name(rng)} was composed by {p2} and staged "
             f"by {librettist}."),
        ],
    )


def _mountain(rng: random.Random) -> Fact:
    mount, range_, climber = _name(rng), _name(rng), _person(rng)
    m = rng.randint(900, 8800)
    other = m + rng.randint(50, 900)
    la = (
        f"Mount {mount} is the highest peak of the {range_} range. It is {m} metres tall; "
        f"{climber} made the first recorded ascent, alone, in winter."
    )
    return dict(
        question=f"how tall is mount {mount.lower()}",
        answer=f"{m} metres",
        long_answer=la,
        direct=(f"Mount {mount}", la),
        paraphrase=(f"{range_} range", f"The summit of {mount}, first reached by {climber}, "
                    f"rises to {m} metres above sea level."),
        near=[
            (f"Mount {mount} (village)", f"Mount {mount} is also a village at the foot of the "
             f"tall mount {mount}; how tall the village church is nobody recorded."),
            (f"Mount {_name(rng)}", f"Mount {_name(rng)} is {other} metres tall and lies in the "
             f"{range_} range."),
        ],
    )


RELATIONS: dict[str, Callable[[random.Random], Fact]] = {
    "bridge": _bridge, "novel": _novel, "capital": _capital,
    "river": _river, "opera": _opera, "mountain": _mountain,
}

# Mid-line words that must not fool a parser.
_TRAPS = [
    "The archive's Document [3] lists a Question: who paid? Answer: the guild, says the ledger.",
    "In the Document register the clerk wrote Question: and then Answer: on the same line.",
    "A Document [12] entry (see Long Answer: none) was later lost.",
]


def _passage(title: str, body: str) -> str:
    return f"(Title: {title}) {body}"


def make_record(
    rng: random.Random, words: _Words, n_docs: int, gold_position: int, index: int,
    words_per_doc: tuple[int, int] = (25, 60),
) -> SyntheticRecord:
    """One record with `n_docs` documents and the gold at 1-based `gold_position`."""
    relation = rng.choice(sorted(RELATIONS))
    fact = RELATIONS[relation](rng)
    style = "paraphrase" if rng.random() < 0.3 else "direct"
    title, body = fact[style]

    def filler() -> str:
        return words.filler(rng, rng.randint(*words_per_doc))

    gold = _passage(title, f"{body} {filler()}")
    # The first near miss repeats every question word without the answer: BM25 usually ranks
    # it above the gold, so it appears in only some records.
    near = fact["near"] if rng.random() < 0.4 else fact["near"][1:]
    others = [_passage(t, f"{b} {filler()}") for t, b in near]
    # A few more near misses drawn from a same-relation fact about other entities, then
    # unrelated passages (other relations' passages and plain filler).
    while len(others) < n_docs - 1:
        r = rng.random()
        if r < 0.15:
            t, b = RELATIONS[relation](rng)["near"][1]
        elif r < 0.35:
            other = RELATIONS[rng.choice(sorted(RELATIONS))](rng)
            t, b = other[rng.choice(["direct", "paraphrase"])]
        else:
            t, b = _name(rng, 0.3), ""
        others.append(_passage(t, f"{b} {filler()}".strip()))
    rng.shuffle(others)
    # Hard cases, spread over records: trap words mid-line, a passage with its own newlines
    # (one line even starting with "Question:"), a title with parentheses and non-ASCII, and a
    # distractor quoting the answer in capitals (must be filtered out as a negative).
    if index % 3 == 0:
        i = rng.randrange(len(others))
        others[i] += " " + _TRAPS[index % len(_TRAPS)]
    if index % 4 == 1:
        i = rng.randrange(len(others))
        others[i] += "\nA second paragraph follows here.\nQuestion: is this the question? No."
    if index % 5 == 2:
        others[rng.randrange(len(others))] = _passage(
            f"{_name(rng, 1.0)} (Ωmega district, Łódź)", f"Żółw café — naïve Ærø. {filler()}"
        )
    if index % 6 == 3:
        others[rng.randrange(len(others))] += f" Locals say {fact['answer'].upper()} often."
    documents = others[: gold_position - 1] + [gold] + others[gold_position - 1:]
    record = NQRecord(
        question=fact["question"], answer=fact["answer"], long_answer=fact["long_answer"],
        documents=documents, gold_id=gold_position,
    )
    return SyntheticRecord(record, relation, style)


def generate(
    n_records: int, seed: int = 0, min_docs: int = 10, max_docs: int = 200,
    words_per_doc: tuple[int, int] = (25, 60), sample_layout: bool = True,
) -> Iterator[SyntheticRecord]:
    """Records with 10..200 documents; gold first, last, middle or anywhere in turn.

    `sample_layout` makes most pools small (10-40) with every 20th at `max_docs` and every 7th
    at `min_docs` (keeps the bundled sample small); otherwise pool sizes are uniform.
    """
    rng = random.Random(seed)
    words = _Words(rng)
    for i in range(n_records):
        if sample_layout:
            n = max_docs if i % 20 == 0 else min_docs if i % 7 == 0 else rng.randint(min_docs, 40)
        else:
            n = rng.randint(min_docs, max_docs)
        gold = [1, n, n // 2 + 1][i % 5] if i % 5 < 3 else rng.randint(1, n)
        yield make_record(rng, words, n, gold, i, words_per_doc)


def to_json_line(rec: NQRecord, index: int) -> bytes:
    """A JSON row like the real file's (prompt + completion = text), with a few rows that carry
    only `text` or only `prompt` + `completion`, which the parser must also accept."""
    text = render_text(rec, INSTRUCTION)
    cut = text.rindex("\nAnswer:") + len("\nAnswer:")
    prompt, completion = text[:cut], text[cut:]
    if index % 10 == 8:
        row = {"text": text}
    elif index % 10 == 9:
        row = {"prompt": prompt, "completion": completion}
    else:
        row = {"prompt": prompt, "completion": completion, "text": text}
    return orjson.dumps(row)


def _valid(n_docs: int = 3, gold: int = 2) -> NQRecord:
    return NQRecord(
        question="who built the tower", answer="Ola Ketsol",
        long_answer="The tower was built by Ola Ketsol. It took two years.",
        documents=[f"(Title: T{i}) passage number {i} about towers." for i in range(1, n_docs + 1)],
        gold_id=gold,
    )


def broken_lines() -> list[tuple[str, bytes]]:
    """(expected skip reason, line) pairs: one line per reason, plus one valid line."""
    good = render_text(_valid(), INSTRUCTION)

    def row(text: str) -> bytes:
        return orjson.dumps({"text": text})

    no_negative = _valid()
    no_negative.documents = [d + " Ola KETSOL." for d in no_negative.documents]
    return [
        ("empty_line", b"   "),
        ("invalid_json", b'{"text": "Document [1] unterminated'),
        # Nested 2000 deep inside a field the parser does not even use (a recursive JSON parser
        # would run out of stack here).
        ("too_deeply_nested", b'{"meta": ' + b"[" * 2000 + b"]" * 2000 + b', "text": ' + orjson.dumps(good) + b"}"),
        ("not_a_json_object", b'["Document [1] a list, not an object"]'),
        ("missing_text", orjson.dumps({"prompt": good[:50], "completion": 7})),
        ("no_documents", row(good.replace("Document [", "Doc ["))),
        ("non_consecutive_document_numbers", row(good.replace("Document [2]", "Document [4]"))),
        ("missing_question_marker", row(good.replace("\nQuestion:", "\nQuery:"))),
        ("missing_answer_marker", row(good.replace("\nAnswer:", "\nReply:"))),
        ("missing_long_answer_marker", row(good.replace("\nLong Answer:", "\nLong Reply:"))),
        ("missing_gold_marker", row(good.replace("\nGold Document ID:", "\nGold:"))),
        ("gold_id_not_integer", row(good.replace("Gold Document ID: 2", "Gold Document ID: two"))),
        ("gold_id_out_of_range", row(good.replace("Gold Document ID: 2", "Gold Document ID: 4"))),
        ("no_negative_candidate", row(render_text(no_negative, INSTRUCTION))),
        ("", row(good)),
    ]
