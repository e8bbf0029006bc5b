"""Tokenizers, the token cache and the stream loader."""

from __future__ import annotations

import numpy as np
import pytest

from longssm.data.corpus import load_corpus, split_documents
from longssm.data.streams import StreamLoader
from longssm.data.tokenizer import load_tokenizer
from longssm.errors import UserError


def test_byte_tokenizer_round_trip():
    tok = load_tokenizer("byte")
    text = " = Valkyria = \n naïve café ✓"
    assert tok.vocab_size == 256
    assert tok.decode(tok.encode(text)) == text


def test_gpt2_tokenizer_matches_known_ids_and_is_not_truncated():
    tok = load_tokenizer("gpt2")
    assert tok.vocab_size == 50257
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's published ids
    long = "word " * 500
    assert len(tok.encode(long)) >= 500  # the shipped tokenizer.json truncates at 50 unless disabled


def test_cache_is_keyed_and_reused(tmp_path, corpus_file):
    tok = load_tokenizer("byte")
    a = load_corpus(str(corpus_file), tok, tmp_path / "cache", progress=False)
    files = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "cache").rglob("*"))
    assert a.tokens.dtype == np.uint16 and len(files) >= 3  # a prepared dataset: manifest, shard, document index
    b = load_corpus(str(corpus_file), tok, tmp_path / "cache", progress=False)
    assert b.digest == a.digest and np.array_equal(a.tokens, b.tokens)
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "cache").rglob("*")) == files  # nothing redone
    c = load_corpus(str(corpus_file), load_tokenizer("gpt2"), tmp_path / "cache", progress=False)
    assert c.digest != a.digest  # the tokenizer is part of the key
    corpus_file.write_text(corpus_file.read_text() + " more")
    d = load_corpus(str(corpus_file), tok, tmp_path / "cache", progress=False)
    assert d.digest != a.digest  # so is the file content


def test_tokens_equal_direct_encoding_and_documents_split_at_headings(tmp_path, corpus_file):
    tok = load_tokenizer("byte")
    corpus = load_corpus(str(corpus_file), tok, tmp_path, progress=False)
    text = corpus_file.read_text()
    assert bytes(np.asarray(corpus.tokens).astype(np.uint8)) == text.encode()
    docs = split_documents(text)
    assert len(docs) == len(corpus.doc_starts) >= 2
    for start in corpus.doc_starts[1:]:
        assert bytes(np.asarray(corpus.tokens[start : start + 3]).astype(np.uint8)) == b" = "


@pytest.mark.parametrize("bad", ["missing.txt", "empty.txt", "blank.txt"])
def test_bad_data_files(tmp_path, bad):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(UserError):
        load_corpus(str(tmp_path / bad), load_tokenizer("byte"), tmp_path, progress=False)


def test_stream_rows_continue_exactly_and_wrap_is_reported():
    tokens = np.arange(2 * 50, dtype=np.int64)
    loader = StreamLoader(tokens, batch_size=2, seq_len=8)
    assert loader.stream_len == 50 and len(loader) == 6
    for k in range(len(loader) - 1):
        a, b = loader.batch(k), loader.batch(k + 1)
        assert (a.y[:, :-1] == a.x[:, 1:]).all()  # targets are inputs shifted by one
        assert (b.x[:, 0] == a.x[:, -1] + 1).all()  # row b of window k+1 continues row b of window k
        assert (a.y[:, -1] == b.x[:, 0]).all()
        assert not b.wrapped
    assert (loader.batch(0).x[1, 0] == 50)  # row 1 starts at S
    wrap = loader.batch(len(loader))
    assert wrap.wrapped and wrap.epoch == 1 and (wrap.x == loader.batch(0).x).all()
    assert not loader.batch(0).wrapped


def test_document_resets_mark_rows_whose_carried_state_is_from_another_document():
    tokens = np.arange(100)
    loader = StreamLoader(tokens, batch_size=2, seq_len=4, doc_starts=np.array([0, 10, 12, 53]))
    # stream 0 = [0, 50), stream 1 = [50, 100); windows start at 0, 4, 8, 12, ...
    resets = {k: loader.batch(k).doc_reset.tolist() for k in range(5)}
    assert resets[0] == [False, False]
    assert resets[1] == [False, True]   # 53 lies in (50, 54]
    assert resets[2] == [False, False]
    assert resets[3] == [True, False]   # 10 and 12 lie in (8, 12]
    assert resets[4] == [False, False]


def test_corpus_too_short_is_a_clear_error():
    with pytest.raises(UserError, match="corpus too short"):
        StreamLoader(np.arange(30), batch_size=4, seq_len=8)
