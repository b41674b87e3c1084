"""RWKV World tokenizer (vocab rwkv_vocab_v20230424): fast encoding, safe decoding.

Encoding goes through the Rust `pyrwkv_tokenizer` (`encode_batch`), which gives the same ids as
the reference `rwkv.rwkv_tokenizer.TRIE_TOKENIZER` at ~20x its speed; the tests keep TRIE as the
oracle. Decoding never uses pyrwkv: its decoder panics (a BaseException) on ids that do not form
valid UTF-8, so `decode` is a small pure-Python byte-table lookup instead.

The vocab file is read from the installed `rwkv` package, the same file the oracle reads, so the
two can never silently drift apart and nothing depends on a path next to a script.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.resources
from pathlib import Path
from typing import Iterable, Sequence

VOCAB_NAME = "rwkv_vocab_v20230424"
# Token ids in the vocab file are 1..65529 (id 0 is reserved); the model's embedding has 65536 rows,
# so every id, and every special id a later stage picks, fits in uint16.
VOCAB_ENTRIES = 65529
MODEL_VOCAB_SIZE = 65536


def vocab_path() -> Path:
    """Path of the vocab file shipped inside the installed `rwkv` package."""
    path = importlib.resources.files("rwkv") / f"{VOCAB_NAME}.txt"
    path = Path(str(path))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall the tokenizer's package with `pip install 'rwkv>=0.8.26,<0.9'`"
        )
    return path


def tokenizer_info() -> dict:
    """What produced the ids; recorded in stats files so a dataset says how it was tokenized."""
    return {
        "vocab": VOCAB_NAME,
        "vocab_file_package": f"rwkv {importlib.metadata.version('rwkv')}",
        "encoder": f"pyrwkv_tokenizer {importlib.metadata.version('pyrwkv_tokenizer')}",
        "id_range": [1, VOCAB_ENTRIES],
        "model_vocab_size": MODEL_VOCAB_SIZE,
    }


class WorldTokenizer:
    """RWKV World tokenizer: `encode`/`encode_batch` in Rust, `decode` in Python."""

    def __init__(self, path: str | Path | None = None) -> None:
        import pyrwkv_tokenizer

        self.path = Path(path) if path is not None else vocab_path()
        self._fast = pyrwkv_tokenizer.WorldTokenizer(str(self.path))

    def encode(self, text: str) -> list[int]:
        return self._fast.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of every string, in order (one Rust call; cheaper than many `encode`s)."""
        if not isinstance(texts, list):
            texts = list(texts)
        return self._fast.encode_batch(texts)

    @functools.cached_property
    def id_to_bytes(self) -> list[bytes]:
        """Byte string of every id (index = id; id 0 and ids past the vocab map to b"")."""
        table = [b""] * MODEL_VOCAB_SIZE
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                line = line.rstrip("\r\n")
                if not line:
                    continue
                # Line format (same parse as TRIE_TOKENIZER): `<id> <python literal> <byte length>`.
                idx = int(line[: line.index(" ")])
                token = ast.literal_eval(line[line.index(" ") : line.rindex(" ")].strip())
                table[idx] = token.encode("utf-8") if isinstance(token, str) else token
        return table

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self.id_to_bytes
        return b"".join(table[i] for i in ids)

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD instead of raising."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> WorldTokenizer:
    """The process-wide tokenizer (loading the vocab takes ~0.7 s; do it once per process)."""
    return WorldTokenizer()


@functools.lru_cache(maxsize=1)
def trie_tokenizer():
    """The reference TRIE_TOKENIZER from the `rwkv` package (slow; tests and benchmarks only)."""
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(str(vocab_path()))
