"""Stream raw lines from a `.jsonl.zst` or plain `.jsonl` file with bounded memory.

The real NQ file is several GB compressed, so it is decompressed chunk by chunk and never held
whole in memory or written to disk. `LineReader.input_bytes` reports how much of the file (its
compressed bytes for `.zst`) has been consumed, which is what a progress bar can honestly show.

A pipe works as well as a file (`zstd -dc big.jsonl.zst | ... --input_file /dev/stdin`, a named
pipe, `<(...)`): it is read once, front to back, and its size is unknown (`input_size` None).
Whether it is zstd is decided by the name, so a pipe is read as plain `.jsonl`.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

import zstandard

# 1 MiB of compressed input decompresses to a few MiB: large enough to amortise the Python
# overhead per chunk, small enough to keep memory flat.
CHUNK_BYTES = 1 << 20


class InputFileError(RuntimeError):
    """The input cannot be read to its end (missing, truncated or not the format its name says)."""


def is_zstd_path(path: str | os.PathLike) -> bool:
    return str(path).endswith(".zst")


def check_input_file(path: str | os.PathLike, flag: str = "--input_file") -> os.stat_result:
    """The input's stat if it is a regular file or a pipe; else `InputFileError` saying what it is."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputFileError(f"{p}: no such file; check {flag}") from None
    except OSError as exc:
        raise InputFileError(f"{p}: cannot be read ({exc.strerror}); check {flag}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputFileError(f"{p} is a folder, not a file; give {flag} the .jsonl or .jsonl.zst file itself")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise InputFileError(f"{p} is not a regular file or a pipe (a device or socket); give {flag} a "
                             ".jsonl or .jsonl.zst file")
    return st


class LineReader:
    """Iterate `(line_number, raw_line)` over a file; `line_number` is 0-based.

    Lines are split on b"\\n" only; the newline is removed, anything else (e.g. a trailing b"\\r")
    is kept, since JSON parsers ignore it. A final line without a newline is still a line.
    """

    def __init__(self, path: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.path = Path(path)
        self.chunk_bytes = chunk_bytes
        st = check_input_file(self.path)
        self.is_pipe = stat.S_ISFIFO(st.st_mode)
        # A pipe's size is unknown; progress then shows bytes read without a total.
        self.input_size: int | None = None if self.is_pipe else st.st_size
        self.input_bytes = 0  # bytes of the file consumed so far (compressed bytes for .zst)

    def _raw_chunks(self, fh: BinaryIO) -> Iterator[bytes]:
        while True:
            chunk = fh.read(self.chunk_bytes)
            if not chunk:
                return
            self.input_bytes += len(chunk)
            yield chunk

    def _zstd_chunks(self, fh: BinaryIO) -> Iterator[bytes]:
        # stream_reader() silently stops at a truncated frame, so drive a decompressobj ourselves:
        # its `eof` tells whether the last frame really ended. A file may hold several frames
        # (e.g. concatenated shards), each needing a fresh decompressobj.
        dctx = zstandard.ZstdDecompressor()
        dobj = dctx.decompressobj()
        frame_open = False
        for chunk in self._raw_chunks(fh):
            while chunk:
                try:
                    out = dobj.decompress(chunk)
                except zstandard.ZstdError as exc:
                    raise InputFileError(
                        f"{self.path}: not a valid zstd stream near compressed byte "
                        f"{self.input_bytes:,} ({exc}); re-download the file or pass the "
                        f"uncompressed .jsonl"
                    ) from exc
                frame_open = not dobj.eof
                if out:
                    yield out
                if dobj.eof:
                    chunk = dobj.unused_data
                    dobj = dctx.decompressobj()
                else:
                    chunk = b""
        if frame_open:
            raise InputFileError(
                f"{self.path}: truncated zstd file (the last frame ends early after "
                f"{self.input_bytes:,} of {'?' if self.input_size is None else f'{self.input_size:,}'} bytes); "
                f"the download is probably incomplete, fetch it again"
            )

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        try:
            fh = open(self.path, "rb")
        except OSError as exc:
            raise InputFileError(f"{self.path}: cannot open ({exc})") from exc
        with fh:
            chunks = self._zstd_chunks(fh) if is_zstd_path(self.path) else self._raw_chunks(fh)
            line_number = 0
            # Pieces of a line that spans chunks; joined once when its newline arrives, so a
            # long line costs linear, not quadratic, time.
            pending: list[bytes] = []
            try:
                for chunk in chunks:
                    start = 0
                    while True:
                        end = chunk.find(b"\n", start)
                        if end < 0:
                            if start < len(chunk):
                                pending.append(chunk[start:])
                            break
                        piece = chunk[start:end]
                        if pending:
                            pending.append(piece)
                            piece = b"".join(pending)
                            pending = []
                        yield line_number, piece
                        line_number += 1
                        start = end + 1
            except OSError as exc:
                raise InputFileError(f"{self.path}: read failed ({exc})") from exc
            if pending:
                yield line_number, b"".join(pending)


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """Yield `(line_number, raw_line)` (0-based) from `.jsonl.zst` or `.jsonl`, streaming.

    Raises `InputFileError` naming the file if it is missing, unreadable or a truncated `.zst`.
    """
    return iter(LineReader(path))
