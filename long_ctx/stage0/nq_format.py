"""Parse one row of the NQ multi-document fine-tuning file (Together Long-Data-Collections).

A row is a JSON object with `text` (= `prompt` + `completion`; rows with only `text`, or only
`prompt` + `completion`, are accepted). The text is::

    <instruction>\\n\\nDocument [1] <doc 1>\\nDocument [2] <doc 2>\\n...\\nDocument [N] <doc N>
    \\n\\nQuestion: <q>\\nAnswer: <a>\\nLong Answer: <la>\\nGold Document ID: <g>

Passages and the long answer may contain newlines and the words "Document [3]", "Question:" or
"Answer:", so the parser never splits on those words alone:

* The tail is located from the right: the last `\\nGold Document ID:`, then the last
  `\\nLong Answer:` before it, the last `\\nAnswer:` before that and the last `\\nQuestion:` before
  that. Question and answer are one-line fields, so a passage or a long answer that mentions the
  markers cannot move them.
* Documents are the region between `Document [1]` and the question marker. Document n ends only
  where the line `Document [n+1]` starts; a line `Document [k]` with any other k is text of the
  passage it is in. If such a line names a number beyond the last document found, the numbering
  itself is broken (e.g. 1, 2, 4) and the row is skipped rather than silently merged.

Every rejected row raises `SkipRecord` with a snake_case `reason` from `SKIP_REASONS`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

#: Deepest JSON nesting accepted (a row needs 1). The limit is checked exactly, before msgspec,
#: whose own limit is Python's recursion limit minus the caller's stack depth: relying on it
#: would make borderline lines parse in one process and fail in another, and the output would
#: depend on the number of workers.
MAX_JSON_DEPTH = 512

#: Every reason `parse_line`/`parse_text` can raise, and what it means.
SKIP_REASONS: dict[str, str] = {
    "empty_line": "the line is empty or only whitespace",
    "invalid_json": "the line is not valid JSON",
    "too_deeply_nested": f"JSON arrays/objects nested more than {MAX_JSON_DEPTH} deep, in any field "
                         "(checked before parsing: a recursive parser would run out of stack)",
    "not_a_json_object": "the JSON value is not an object",
    "missing_text": "no string `text`, and no string `prompt` + `completion` to rebuild it",
    "no_documents": "no `Document [1]` at the start of a line",
    "non_consecutive_document_numbers": "document numbers are not 1..N in order",
    "missing_question_marker": "no `Question:` line after the documents",
    "missing_answer_marker": "no `Answer:` line after the question",
    "missing_long_answer_marker": "no `Long Answer:` line after the answer",
    "missing_gold_marker": "no `Gold Document ID:` line at the end",
    "gold_id_not_integer": "the gold document id is not a plain integer",
    "gold_id_out_of_range": "the gold document id is not between 1 and the number of documents",
}


class SkipRecord(Exception):
    """A row that cannot be used; `reason` is a short snake_case name (see `SKIP_REASONS`)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class NQRecord:
    question: str
    answer: str
    long_answer: str
    documents: list[str]
    gold_id: int  # 1-based index into `documents`


QUESTION_MARKER = "\nQuestion:"
ANSWER_MARKER = "\nAnswer:"
LONG_ANSWER_MARKER = "\nLong Answer:"
GOLD_MARKER = "\nGold Document ID:"
FIRST_DOCUMENT = "Document [1]"

_LINE_MARKER = "\nDocument ["


def parse_text(text: str) -> NQRecord:
    """Parse the full row text into an `NQRecord`; raises `SkipRecord`."""
    gold_at = text.rfind(GOLD_MARKER)
    if gold_at < 0:
        raise SkipRecord("missing_gold_marker")
    long_at = text.rfind(LONG_ANSWER_MARKER, 0, gold_at)
    if long_at < 0:
        raise SkipRecord("missing_long_answer_marker")
    answer_at = text.rfind(ANSWER_MARKER, 0, long_at)
    if answer_at < 0:
        raise SkipRecord("missing_answer_marker")
    question_at = text.rfind(QUESTION_MARKER, 0, answer_at)
    if question_at < 0:
        raise SkipRecord("missing_question_marker")

    gold_text = text[gold_at + len(GOLD_MARKER):].strip()
    # isdecimal() alone accepts other scripts' digits; int() would then silently accept them.
    if not (gold_text.isascii() and gold_text.isdecimal()):
        raise SkipRecord("gold_id_not_integer", repr(gold_text[:40]))

    documents = _split_documents(text, question_at)
    gold_id = int(gold_text)
    if not 1 <= gold_id <= len(documents):
        raise SkipRecord("gold_id_out_of_range", f"{gold_id} of {len(documents)} documents")
    return NQRecord(
        question=text[question_at + len(QUESTION_MARKER):answer_at].strip(),
        answer=text[answer_at + len(ANSWER_MARKER):long_at].strip(),
        long_answer=text[long_at + len(LONG_ANSWER_MARKER):gold_at].strip(),
        documents=documents,
        gold_id=gold_id,
    )


_markers: list[str] = []  # _markers[k] = "\nDocument [k]", grown on demand


def _marker(k: int) -> str:
    while len(_markers) <= k:
        _markers.append(f"{_LINE_MARKER}{len(_markers)}]")
    return _markers[k]


def _split_documents(text: str, end: int) -> list[str]:
    if text.startswith(FIRST_DOCUMENT):
        first = 0
    else:
        first = text.find("\n" + FIRST_DOCUMENT, 0, end)
        if first < 0:
            raise SkipRecord("no_documents")
        first += 1
    # Document n ends where the first line `Document [n+1]` after it starts. Fast path: split
    # at every line `Document [`; if the pieces are numbered 2, 3, ... in order, there is no
    # stray marker line and the pieces are the documents.
    pieces = text[first + len(FIRST_DOCUMENT):end].split(_LINE_MARKER)
    while len(_prefixes) <= len(pieces):
        _prefixes.append(f"{len(_prefixes)}]")
    prefixes = _prefixes[2:len(pieces) + 1]
    if not all(map(str.startswith, pieces[1:], prefixes)):
        return _split_documents_slow(text, first, end)
    docs = [pieces[0].strip()]
    docs += [piece[len(prefix):].strip() for piece, prefix in zip(pieces[1:], prefixes)]
    return docs


_prefixes: list[str] = []  # _prefixes[n] = "n]"


def _split_documents_slow(text: str, first: int, end: int) -> list[str]:
    # Some line `Document [k]` is not the next document's marker: find each marker in turn.
    content = [first + len(FIRST_DOCUMENT)]
    stops: list[int] = []
    while True:
        marker = _marker(len(content) + 1)
        at = text.find(marker, content[-1], end)
        if at < 0:
            break
        stops.append(at)
        content.append(at + len(marker))
    stops.append(end)
    _check_stray_markers(text, first, end, set(stops), len(content))
    return [text[a:b].strip() for a, b in zip(content, stops)]


def _check_stray_markers(text: str, first: int, end: int, used: set[int], n_docs: int) -> None:
    # Lines `Document [k]` that did not delimit a document are passage text, unless k is beyond
    # the last document: then the numbering itself is broken (e.g. 1, 2, 4).
    at = text.find(_LINE_MARKER, first, end)
    while at >= 0:
        digits_at = at + len(_LINE_MARKER)
        close = text.find("]", digits_at, min(digits_at + 12, end))
        digits = text[digits_at:close] if close > digits_at else ""
        if at not in used and digits.isascii() and digits.isdigit() and int(digits) > n_docs:
            raise SkipRecord(
                "non_consecutive_document_numbers",
                f"found Document [{int(digits)}] but documents stop at {n_docs}",
            )
        at = text.find(_LINE_MARKER, digits_at, end)


class _TextRow(msgspec.Struct):
    text: Any = None


class _PromptRow(msgspec.Struct):
    prompt: Any = None
    completion: Any = None


# Decoding only the fields we need: msgspec skips the others without building strings (a real
# row carries its text twice, as `text` and as `prompt` + `completion`).
_text_decoder = msgspec.json.Decoder(_TextRow)
_prompt_decoder = msgspec.json.Decoder(_PromptRow)


def _decode(decoder: msgspec.json.Decoder, line: bytes | str):
    try:
        return decoder.decode(line)
    except msgspec.ValidationError:  # valid JSON, but not an object
        raise SkipRecord("not_a_json_object") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise SkipRecord("invalid_json", str(exc)[:80]) from None
    except RecursionError:  # not reached after the depth check; kept as a last line of defence
        raise SkipRecord("too_deeply_nested") from None


# A JSON string (escapes included), to blank out before counting brackets.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def json_depth_exceeds(line: bytes | str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether some array/object of the JSON text `line` lies more than `limit` levels deep.

    Exact for valid JSON (brackets inside strings do not count); for broken JSON it counts the
    brackets outside what look like strings. Cheap on real rows: a bracket outside a string is
    never preceded by "Document ", so the count of brackets minus `Document [` markers bounds
    the depth from above, and only lines over the limit by that bound are scanned.
    """
    data = line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")
    # x | 0x20 == 0x7B holds for exactly '[' (0x5B) and '{' (0x7B); numpy counts them ~8x
    # faster than two bytes.count() calls.
    bound = int(np.count_nonzero(np.frombuffer(data, np.uint8) | 0x20 == 0x7B))
    if bound <= limit:
        return False
    bound -= data.count(b"Document [")  # (rows of over ~250 documents only)
    if bound <= limit:
        return False
    depth = 0
    for m in _BRACKETS.finditer(_JSON_STRING.sub(b'""', data)):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def parse_line(line: bytes | str) -> NQRecord:
    """Parse one JSON line (`text`, or `prompt` + `completion`); raises `SkipRecord`.

    Fields other than the ones used are skipped unread, so e.g. bad UTF-8 inside an unused
    `prompt` does not reject a row whose `text` is fine.
    """
    if not line or line.isspace():  # isspace() stops at the first other character
        raise SkipRecord("empty_line")
    if json_depth_exceeds(line):
        raise SkipRecord("too_deeply_nested")
    text = _decode(_text_decoder, line).text
    if not isinstance(text, str):
        row = _decode(_prompt_decoder, line)
        if not (isinstance(row.prompt, str) and isinstance(row.completion, str)):
            raise SkipRecord("missing_text")
        text = row.prompt + row.completion
    return parse_text(text)


def render_text(record: NQRecord, instruction: str = "") -> str:
    """The row text for `record` in the file's format (the inverse of `parse_text`)."""
    docs = "\n".join(f"Document [{i}] {doc}" for i, doc in enumerate(record.documents, 1))
    head = f"{instruction}\n\n" if instruction else ""
    return (
        f"{head}{docs}\n\nQuestion: {record.question}\nAnswer: {record.answer}\n"
        f"Long Answer: {record.long_answer}\nGold Document ID: {record.gold_id}"
    )
