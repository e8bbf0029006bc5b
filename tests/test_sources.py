"""data/sources.py: every input kind gives its documents in order, long documents are cut where the tokens do not
change, and a bad row is an error naming file and line (or left out with one warning)."""

from __future__ import annotations

import gzip
import json

import pytest

from longssm.data.corpus import split_documents
from longssm.data.sources import cut_allowed, find_sources, iter_pieces
from longssm.data.tokenizer import load_tokenizer
from longssm.errors import UserError
from longssm.paths import resolve_path

SHIPPED = resolve_path("builtin:wikitext-103/wiki.train.prefix.tokens")
DOCS = ["first document\nwith two lines\n", "second ünïcode document", "third"]


def documents(sources, **kwargs) -> list[str]:
    """The whole documents of ``iter_pieces`` (pieces joined)."""
    out: list[str] = []
    for piece in iter_pieces(sources, **kwargs):
        if piece.starts_document:
            out.append(piece.text)
        else:
            out[-1] += piece.text
    return out


def write_jsonl(path, rows) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    elif path.name.endswith(".zst"):
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")


def test_wikitext_split_equals_the_reference_splitter_on_the_shipped_text():
    text = SHIPPED.read_text(encoding="utf-8")
    assert documents(find_sources([str(SHIPPED)]), split="wikitext") == split_documents(text)
    assert documents(find_sources([str(SHIPPED)])) == [text]  # split none: the file is one document


def test_long_documents_are_cut_where_gpt2_tokens_do_not_change():
    text = SHIPPED.read_text(encoding="utf-8")[:300_000]
    pieces = [p.text for p in iter_pieces(find_sources([str(SHIPPED)]), piece_chars=3000)]
    assert "".join(pieces) == SHIPPED.read_text(encoding="utf-8") and len(pieces) > 100
    tok = load_tokenizer("gpt2")
    head, n = [], 0
    for piece in pieces:
        if n + len(piece) > len(text):
            break
        head.append(piece)
        n += len(piece)
    assert [t for p in head for t in tok.encode(p)] == tok.encode("".join(head))


def test_cut_points_follow_gpt2s_pretokenizer():
    tok = load_tokenizer("gpt2")
    for before, line in [("a\n", "The"), ("a\n", " The"), ("a\n", "  The"), ("a\n\n", " \n"), ("a \n", " = b")]:
        joined = tok.encode(before + line) == tok.encode(before) + tok.encode(line)
        assert not cut_allowed(line) or joined, (before, line)
    assert cut_allowed("The") and cut_allowed(" The") and not cut_allowed("  The") and not cut_allowed("\n")


def test_blank_lines_split(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("one\nline\n\n\ntwo\n  \nthree\n")
    assert documents(find_sources([str(f)]), split="blank-lines") == ["one\nline\n", "two\n", "three\n"]


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.jsonl.zst"])
def test_jsonl_rows_are_documents(tmp_path, name):
    write_jsonl(tmp_path / name, [{"text": d, "id": i} for i, d in enumerate(DOCS)] + [{"text": "  "}])
    assert documents(find_sources([str(tmp_path / name)])) == DOCS  # the blank row is no document


def test_parquet_and_saved_hf_dataset(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": DOCS, "n": [1, 2, 3]}), tmp_path / "d.parquet", row_group_size=2)
    assert documents(find_sources([str(tmp_path / "d.parquet")]), text_field="body") == DOCS
    with pytest.raises(UserError, match=r"no column 'text' \(columns: body, n\)"):
        documents(find_sources([str(tmp_path / "d.parquet")]))
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "hf"))
    (sources,) = [find_sources([str(tmp_path / "hf")])]
    assert [s.kind for s in sources] == ["hf"] and documents(sources) == DOCS
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS[:1]})}).save_to_disk(str(tmp_path / "dd"))
    assert documents(find_sources([str(tmp_path / "dd")])) == DOCS[:1]
    with pytest.raises(UserError, match="has splits train; no 'test'"):
        documents(find_sources([str(tmp_path / "dd")]), hf_split="test")


def test_directories_and_globs_in_order_hidden_skipped(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two")
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / ".hidden.txt").write_text("no")
    write_jsonl(tmp_path / "b" / "3.jsonl", [{"text": "three"}])
    assert documents(find_sources([str(tmp_path)])) == ["one", "two", "three"]
    assert documents(find_sources([str(tmp_path / "**" / "*.txt")])) == ["one", "two"]
    assert documents(find_sources([str(tmp_path / "a.txt"), str(tmp_path / "*.txt")])) == ["one"]  # each file once
    with pytest.raises(UserError, match="no file matches"):
        find_sources([str(tmp_path / "*.parquet")])
    with pytest.raises(UserError, match="input not found"):
        find_sources([str(tmp_path / "missing.txt")])
    with pytest.raises(UserError, match="no input given"):
        find_sources([])


def test_bad_rows_name_file_and_line_or_are_skipped_with_one_warning(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n{not json\n{"body": "x"}\n{"text": 3}\n["a"]\n{"text": "last"}\n')
    sources = find_sources([str(f)])
    with pytest.raises(UserError, match=rf"{f}:2: not JSON"):
        documents(sources)
    warnings: list[str] = []
    assert documents(sources, on_error="skip", warn=warnings.append) == ["ok", "last"]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {f}: skipped 4 row(s) (first: line 2: not JSON")
    f.write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(UserError, match=rf"{f}:2: no field 'text' \(fields: body\)"):
        documents(find_sources([str(f)]))
    f.write_text('{"text": null}\n')
    with pytest.raises(UserError, match=rf"{f}:1: field 'text' is null, not a string"):
        documents(find_sources([str(f)]))


def test_damaged_compressed_and_non_utf8_inputs(tmp_path):
    (tmp_path / "x.jsonl.zst").write_bytes(b"not zstd at all")
    with pytest.raises(UserError, match="corrupt"):
        documents(find_sources([str(tmp_path / "x.jsonl.zst")]))
    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n')[:-6])
    with pytest.raises(UserError, match="corrupt"):
        documents(find_sources([str(tmp_path / "x.jsonl.gz")]))
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.txt:1: not UTF-8 text"):
        documents(find_sources([str(tmp_path / "latin.txt")]))
