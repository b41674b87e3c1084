import pytest
import zstandard

from long_ctx.common.line_reader import InputFileError, LineReader, iter_lines

PAYLOAD = b'{"a": 1}\n\n{"b": "x\\ny"}\r\nlast line without newline'


def expected_lines(data: bytes) -> list[tuple[int, bytes]]:
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    return list(enumerate(parts))


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
@pytest.mark.parametrize("data", [PAYLOAD, PAYLOAD + b"\n", b"", b"\n\n", b"x" * 5000 + b"\ny"])
def test_plain_and_zst_give_the_split_lines(tmp_path, data, chunk):
    plain = tmp_path / "in.jsonl"
    plain.write_bytes(data)
    packed = tmp_path / "in.jsonl.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(data))
    for path in (plain, packed):
        reader = LineReader(path, chunk_bytes=chunk)
        assert list(reader) == expected_lines(data)
        assert reader.input_bytes == path.stat().st_size


def test_multiple_zstd_frames(tmp_path):
    path = tmp_path / "in.jsonl.zst"
    c = zstandard.ZstdCompressor()
    path.write_bytes(c.compress(b"one\ntw") + c.compress(b"o\nthree\n"))
    assert list(iter_lines(path)) == [(0, b"one"), (1, b"two"), (2, b"three")]


def test_truncated_zst_is_an_error_naming_the_file(tmp_path):
    data = b"".join(b'{"line": %d, "pad": "%s"}\n' % (i, b"z" * (i % 50)) for i in range(3000))
    blob = zstandard.ZstdCompressor().compress(data)
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(blob[: len(blob) // 2])
    seen = []
    with pytest.raises(InputFileError, match="cut.jsonl.zst.*truncated"):
        for item in LineReader(path, chunk_bytes=1024):
            seen.append(item)
    assert seen == expected_lines(data)[: len(seen)]  # what came before is intact


def test_garbage_zst_and_missing_file(tmp_path):
    bad = tmp_path / "bad.jsonl.zst"
    bad.write_bytes(b"this is not zstd at all\n")
    with pytest.raises(InputFileError, match="bad.jsonl.zst"):
        list(iter_lines(bad))
    with pytest.raises(InputFileError, match="nope.jsonl"):
        iter_lines(tmp_path / "nope.jsonl")
