"""Tokenizers: byte-level (vocab 256) and Hugging Face ``tokenizers`` files (GPT-2 BPE is shipped)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError, first_line
from ..files import sha256_file
from ..paths import resolve_path


class ByteTokenizer:
    """UTF-8 bytes as token ids: vocabulary 256, no unknown tokens, no training."""

    name = "byte"
    vocab_size = 256
    identity = "byte-v1"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (e.g. GPT-2 BPE, vocab 50257)."""

    def __init__(self, path: Path, name: str | None = None) -> None:
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception subclasses with long messages
            raise UserError(f"cannot read tokenizer {path}: {first_line(e)}") from None
        # Some tokenizer.json files (GPT-2's among them) ship with truncation at 50 tokens: we tokenize corpora.
        self._tok.no_truncation()
        self._tok.no_padding()
        self.name = name or str(path)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.identity = "hf-" + sha256_file(path)[:16]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([int(i) for i in ids])


Tokenizer = ByteTokenizer | HFTokenizer


def load_tokenizer(spec: str) -> Tokenizer:
    """``"byte"``, ``"gpt2"`` (the shipped GPT-2 BPE) or a path to a ``tokenizer.json``."""
    if spec == "byte":
        return ByteTokenizer()
    if spec == "gpt2":
        return HFTokenizer(resolve_path("builtin:tokenizers/gpt2/tokenizer.json"), name="gpt2")
    path = resolve_path(spec)
    if not path.is_file():
        raise UserError(f"data.tokenizer must be 'byte', 'gpt2' or a tokenizer.json path; {spec!r} is none of these")
    return HFTokenizer(path)


def vocabulary_mismatch(tokenizer: Tokenizer, vocab_size: int) -> str | None:
    """Why ``tokenizer`` cannot be the tokenizer of a model with ``vocab_size`` embeddings, or None when it can.

    A model's vocabulary may exceed its tokenizer's by padding (checkpoints pad to a multiple of 8 … 128: GPT-2's
    50257 tokens to 50280 or 50304), so it fits when ``vocab_size`` is at most the tokenizer's size rounded up to a
    multiple of 256; a larger model vocabulary means another tokenizer (a GPT-2 model read with the byte tokenizer
    scores 256 of its 50280 tokens), and a smaller one cannot embed every token."""
    n = tokenizer.vocab_size
    if n > vocab_size:
        return f"its tokenizer {tokenizer.name!r} has {n} tokens, more than the model's vocabulary of {vocab_size}"
    if -(-n // 256) * 256 < vocab_size:
        return (f"its tokenizer {tokenizer.name!r} has {n} tokens, far fewer than the model's vocabulary of "
                f"{vocab_size}: probably not the tokenizer it was trained with")
    return None
