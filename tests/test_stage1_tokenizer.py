"""The fast tokenizer must give exactly TRIE_TOKENIZER's ids; decode must never crash."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stage12_helpers import TRICKY_STRINGS

from long_ctx.world_tokenizer import VOCAB_ENTRIES, get_tokenizer, trie_tokenizer, vocab_path


def test_encode_matches_trie_on_tricky_corpus():
    tok, trie = get_tokenizer(), trie_tokenizer()
    for s in TRICKY_STRINGS:
        assert tok.encode(s) == trie.encode(s), repr(s[:80])


def test_encode_batch_matches_trie_and_keeps_order():
    tok, trie = get_tokenizer(), trie_tokenizer()
    texts = TRICKY_STRINGS + TRICKY_STRINGS[::-1]
    assert tok.encode_batch(texts) == [trie.encode(s) for s in texts]
    assert tok.encode_batch([]) == []


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=60), max_size=6))
def test_encode_batch_matches_trie_on_random_text(texts):
    trie = trie_tokenizer()
    assert get_tokenizer().encode_batch(texts) == [trie.encode(s) for s in texts]


def test_vocab_comes_from_installed_package_and_decode_table_matches_trie():
    assert "site-packages" in str(vocab_path()) or "dist-packages" in str(vocab_path())
    tok, trie = get_tokenizer(), trie_tokenizer()
    assert len(trie.idx2token) == VOCAB_ENTRIES
    for i, b in trie.idx2token.items():
        assert tok.id_to_bytes[i] == b


def test_decode_round_trips_and_tolerates_broken_utf8():
    tok, trie = get_tokenizer(), trie_tokenizer()
    for s in TRICKY_STRINGS:
        assert tok.decode(tok.encode(s)) == s
    # A lone continuation byte / half of a multi-byte char: pyrwkv's decoder would panic here.
    broken = [trie.token2idx[b"\x80"], trie.token2idx[b"\xf0"]]
    assert tok.decode_bytes(broken) == trie.decodeBytes(broken)
    assert "\ufffd" in tok.decode(broken)
