"""Tokenizers: the built-in GPT-2 BPE (tiktoken engine, shipped data) and a model's own.

Both expose the same small interface; token pieces are bytes, since a GPT-2 token can be part
of a UTF-8 sequence.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import json
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from itertools import chain, islice
from typing import TYPE_CHECKING, Any

from gpt2cli.errors import InputError, ModelError
from gpt2cli.inputs import GPT2_SPLITS, SplitRule, split_chunks

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future
    from pathlib import Path

    import tiktoken

GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
ENDOFTEXT = "<|endoftext|>"
GPT2_VOCAB_SIZE = 50257
GPT2_MAX_TOKEN_BYTES = 128
# --threads above this many per usable CPU only thrash (and thousands hang onnxruntime).
THREADS_PER_CPU = 4


def max_threads() -> int:
    """The largest --threads accepted: THREADS_PER_CPU per CPU this process may run on."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return THREADS_PER_CPU * max(cpus, 1)


def check_threads(threads: int | None) -> int | None:
    """`threads` if it is a sane thread count; an InputError on `threads` otherwise."""
    if threads is not None and not 1 <= threads <= max_threads():
        raise InputError(
            param="threads",
            reason=f"must be from 1 to {max_threads()} ({THREADS_PER_CPU} per CPU available), "
            f"got {threads}",
        )
    return threads


class Tokenizer:
    """The interface every command uses."""

    vocab_size: int
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str], threads: int | None = None) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def pool(self, threads: int | None = None) -> Executor | None:
        """A thread pool for encoding chunks in parallel; None where encode_batch does it."""
        return None

    def token_bytes(self, token_id: int) -> bytes:
        raise NotImplementedError

    def id_bound(self) -> int:
        """One more than the largest id the tokenizer can produce."""
        return self.vocab_size

    def split_rule(self) -> SplitRule | None:
        """Where a text may be cut and encoded in pieces with the same ids; None: nowhere."""
        return None

    @property
    def max_token_bytes(self) -> int | None:
        """The longest token in bytes (a text of n bytes has at least n / this many tokens)."""
        return None

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return b"".join(self.token_bytes(i) for i in ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def check_ids(self, ids: Sequence[int]) -> None:
        for token_id in ids:
            if not 0 <= token_id < self.vocab_size:
                raise InputError(
                    f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})"
                )


class GPT2Tokenizer(Tokenizer):
    """OpenAI's GPT-2 BPE on the tiktoken engine, from the vocabulary shipped in the package."""

    def __init__(self, parse_special: bool = True) -> None:
        # Built in a thread (about 0.1 s: importing tiktoken, reading the ranks, tiktoken's own
        # set-up), which overlaps with whatever the caller does next: loading a model's weights,
        # where ONNX Runtime releases the GIL. The first use waits for it; so does the exit (not a
        # daemon: no thread is cut off inside tiktoken at shutdown).
        self._built: tiktoken.Encoding | None = None
        self._building = threading.Thread(target=self._build, name="gpt2cli-tokenizer")
        self._building.start()
        self._parse_special = parse_special
        self._pool = None
        self._pool_threads = 0
        self.vocab_size = GPT2_VOCAB_SIZE
        self.eos_token_id = GPT2_VOCAB_SIZE - 1

    def _build(self) -> None:
        with contextlib.suppress(Exception):  # then the first use raises it
            self._built = _gpt2_encoding()

    @property
    def _encoding(self) -> tiktoken.Encoding:
        if self._built is None:
            self._building.join()  # returns at once in a child forked meanwhile
            if self._built is None:
                self._built = _gpt2_encoding()
        return self._built

    def encode(self, text: str) -> list[int]:
        if self._parse_special and ENDOFTEXT in text:
            return self._encoding.encode(text, allowed_special="all")
        return self._encoding.encode_ordinary(text)  # skips the special-token scan

    def encode_batch(self, texts: Sequence[str], threads: int | None = None) -> list[list[int]]:
        pool = self.pool(threads) if len(texts) > 1 else None
        if pool is None:
            return [self.encode(t) for t in texts]
        return list(pool.map(self.encode, texts))

    def pool(self, threads: int | None = None) -> Executor | None:
        """The encoder's thread pool, or None for one thread (tiktoken releases the GIL)."""
        threads = threads or os.cpu_count() or 1
        if threads == 1:
            return None
        # One long-lived pool: tiktoken keeps per-thread regex state, so fresh threads for
        # every batch (as its encode_batch does) grow memory by hundreds of MB on big inputs.
        if self._pool is None or self._pool_threads != threads:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="gpt2cli-encode")
            self._pool_threads = threads
        return self._pool

    def token_bytes(self, token_id: int) -> bytes:
        try:
            return self._encoding.decode_single_token_bytes(token_id)
        except KeyError:  # as HFTokenizer says it
            raise InputError(f"token id {token_id} is not in the vocabulary") from None

    def split_rule(self) -> SplitRule:
        return GPT2_SPLITS

    @property
    def max_token_bytes(self) -> int:
        return GPT2_MAX_TOKEN_BYTES

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        try:
            return self._encoding.decode_bytes(ids)
        except KeyError:  # an id outside the vocabulary: say which
            return super().decode_bytes(ids)


def _gpt2_encoding() -> tiktoken.Encoding:
    import tiktoken

    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=_gpt2_ranks(),
        special_tokens={ENDOFTEXT: GPT2_VOCAB_SIZE - 1},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


def _gpt2_ranks() -> dict[bytes, int]:
    """Token bytes to rank, from the shipped file (lines of `base64 rank`, sorted by rank)."""
    data = resources.files("gpt2cli").joinpath("data/gpt2.tiktoken").read_bytes()
    tokens = [line.split(b" ", 1)[0] for line in data.splitlines()]
    return dict(zip(map(binascii.a2b_base64, tokens), range(len(tokens)), strict=True))


# GPT-2's own tokenizer files, recognised so that a model shipping them gets the built-in
# tokenizer (tiktoken, shipped ranks: about 0.1 s) instead of `tokenizers` parsing tokenizer.json
# (about 0.5 s with the vocabulary scan for the split rule). Both give the same ids
# (tests/test_cold_start.py). The digests are of the vocabulary (tokens in id order) and the
# merges ("left right"), each joined with newlines: see _bpe_digests.
GPT2_VOCAB_SHA256 = "e35a33a0b2250c932ffdafc4c3a3552aef0cc7af7a11e9ebfddf1d2a6517371f"
GPT2_MERGES_SHA256 = "04e3597d7996f292ca9b8b7285ca4d58a6ae171ac47d73fc7140ceb0c7a6bbc0"
GPT2_MERGES = 50000
# tokenizer.json files known byte for byte to be GPT-2's (as transformers 4.57 saves it): no
# need to parse them. Any other file is checked field by field.
GPT2_TOKENIZER_JSON_SHA256 = frozenset(
    {"1fe93b6152957cf9cfd6d89002467f789ce8b3f3e000b3a2edf27c808ddd0b9e"}
)
_MAX_GPT2_FILE_BYTES = 4 << 20  # GPT-2's tokenizer.json is 1.4 MB: anything far bigger is not
# GPT-2's only added token, as tokenizers writes it (`normalized` is moot without a normalizer).
_GPT2_ADDED_TOKEN: dict[str, Any] = {
    "id": GPT2_VOCAB_SIZE - 1, "content": ENDOFTEXT, "single_word": False, "lstrip": False,
    "rstrip": False, "special": True,
}  # fmt: skip


def is_gpt2_tokenizer(directory: Path) -> bool:
    """Whether the tokenizer files in `directory` that HFTokenizer.from_dir would read are
    GPT-2's own: the same vocabulary and merges, the same single added token, the same
    pre-tokenizer and no normalizer, truncation or padding, so that GPT2Tokenizer gives the
    same ids. Any doubt (a file unreadable or laid out otherwise) is False."""
    try:
        tokenizer_json = directory / "tokenizer.json"
        if tokenizer_json.is_file():
            return _is_gpt2_tokenizer_json(tokenizer_json.read_bytes())
        vocab, merges = directory / "vocab.json", directory / "merges.txt"
        if vocab.is_file() and merges.is_file():
            return _is_gpt2_vocab_files(vocab.read_bytes(), merges.read_bytes())
    except Exception:  # noqa: BLE001 - a file `tokenizers` may still read, or report
        return False
    return False


def _is_gpt2_tokenizer_json(data: bytes) -> bool:
    if hashlib.sha256(data).hexdigest() in GPT2_TOKENIZER_JSON_SHA256:
        return True
    if len(data) > _MAX_GPT2_FILE_BYTES:
        return False
    spec = json.loads(data)
    model, pre = spec["model"], spec["pre_tokenizer"]
    added = spec["added_tokens"]
    return (
        spec.get("truncation") is None
        and spec.get("padding") is None
        and spec.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and pre.get("add_prefix_space") is False
        and pre.get("use_regex", True) is True
        and model.get("type") == "BPE"
        and model.get("dropout") is None
        and model.get("unk_token") is None
        and model.get("continuing_subword_prefix") in (None, "")
        and model.get("end_of_word_suffix") in (None, "")
        and model.get("byte_fallback", False) is False
        and model.get("ignore_merges", False) is False
        and len(added) == 1
        and _same(added[0], _GPT2_ADDED_TOKEN, optional=("normalized",))
        and _bpe_digests(model["vocab"], model["merges"]) == (GPT2_VOCAB_SHA256, GPT2_MERGES_SHA256)
    )


def _is_gpt2_vocab_files(vocab: bytes, merges: bytes) -> bool:
    """vocab.json and merges.txt as HFTokenizer.from_dir reads them (lines starting with
    #version skipped, as `tokenizers` does)."""
    if len(vocab) > _MAX_GPT2_FILE_BYTES or len(merges) > _MAX_GPT2_FILE_BYTES:
        return False
    lines = merges.decode("utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    pairs = [line for line in lines if not line.startswith("#version")]
    digests = _bpe_digests(json.loads(vocab), pairs)
    return digests == (GPT2_VOCAB_SHA256, GPT2_MERGES_SHA256)


def _same(found: Any, expected: dict[str, Any], optional: tuple[str, ...] = ()) -> bool:
    """`found` is a dict with exactly `expected`'s items (types included: True is not 1),
    plus any of the `optional` keys."""
    if not isinstance(found, dict) or set(found) - set(optional) != set(expected):
        return False
    return all(type(found[k]) is type(v) and found[k] == v for k, v in expected.items())


def _bpe_digests(vocab: Any, merges: Any) -> tuple[str, str] | None:
    """sha256 of the tokens in id order and of the merges as "left right" lines; None unless
    they have GPT-2's sizes, the ids are 0..n-1 and no token or merge holds a newline (so
    that the joined texts stand for exactly one vocabulary and one merge list)."""
    if not isinstance(vocab, dict) or len(vocab) != GPT2_VOCAB_SIZE:
        return None
    if not isinstance(merges, list) or len(merges) != GPT2_MERGES:
        return None
    tokens: list[str | None] = [None] * GPT2_VOCAB_SIZE
    for token, token_id in vocab.items():
        if type(token_id) is not int or not 0 <= token_id < GPT2_VOCAB_SIZE:
            return None
        tokens[token_id] = token
    if any(token is None for token in tokens):
        return None
    vocab_text = "\n".join(tokens)  # type: ignore[arg-type]
    if all(type(merge) is str for merge in merges):
        merge_text = "\n".join(merges)  # a line with other than one space will not match
    elif all(type(merge) is list and len(merge) == 2 for merge in merges):
        merge_text = "\n".join(map(" ".join, merges))
        if merge_text.count(" ") != GPT2_MERGES:  # a space inside a piece
            return None
    else:
        return None
    if vocab_text.count("\n") != GPT2_VOCAB_SIZE - 1 or merge_text.count("\n") != GPT2_MERGES - 1:
        return None
    return (
        hashlib.sha256(vocab_text.encode("utf-8")).hexdigest(),
        hashlib.sha256(merge_text.encode("utf-8")).hexdigest(),
    )


def model_tokenizer(directory: Path, parse_special: bool = True) -> Tokenizer:
    """The tokenizer of a model directory's tokenizer files: the built-in one when they are
    GPT-2's own (is_gpt2_tokenizer), which loads several times faster; else HFTokenizer."""
    if is_gpt2_tokenizer(directory):
        return GPT2Tokenizer(parse_special=parse_special)
    return HFTokenizer.from_dir(directory, parse_special=parse_special)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, mapped back from printable characters to bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class HFTokenizer(Tokenizer):
    """A model's own byte-level BPE tokenizer, through the `tokenizers` library."""

    def __init__(
        self,
        tokenizer,  # noqa: ANN001
        eos_token: str | None = ENDOFTEXT,
        parse_special: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        # Off: special tokens' text is split like any other text, as tiktoken's encode_ordinary.
        tokenizer.encode_special_tokens = not parse_special
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_token_id = tokenizer.token_to_id(eos_token) if eos_token else None
        self._specials = {
            token_id: added.content.encode()
            for token_id, added in tokenizer.get_added_tokens_decoder().items()
        }
        self._bytes_cache: dict[int, bytes] = {}
        self._facts: tuple[SplitRule | None, int | None] | None = None

    def split_rule(self) -> SplitRule | None:
        return self._vocab_facts()[0]

    @property
    def max_token_bytes(self) -> int | None:
        return self._vocab_facts()[1]

    def _vocab_facts(self) -> tuple[SplitRule | None, int | None]:
        """The split rule and longest token, for a GPT-2-style byte-level BPE; else None."""
        if self._facts is None:
            self._facts = (None, None)
            if _gpt2_style(self._tokenizer):
                decoder = _byte_decoder()
                try:
                    tokens = [
                        bytes(decoder[c] for c in piece)
                        for piece in self._tokenizer.get_vocab(with_added_tokens=False)
                    ]
                except KeyError:  # not GPT-2's byte alphabet
                    return self._facts
                added = self._tokenizer.get_added_tokens_decoder().values()
                specials = [a.content for a in added]
                longest = max([len(t) for t in tokens] + [len(s.encode()) for s in specials])
                self._facts = (SplitRule.from_vocab(tokens, specials), longest)
        return self._facts

    def id_bound(self) -> int:
        """One more than the largest id the tokenizer can produce (ids may be sparse)."""
        return max(self._tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1

    @classmethod
    def from_dir(cls, directory, parse_special: bool = True) -> HFTokenizer:  # noqa: ANN001
        from tokenizers import Tokenizer as RawTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        tokenizer_json = directory / "tokenizer.json"
        vocab, merges = directory / "vocab.json", directory / "merges.txt"
        if tokenizer_json.is_file():
            try:
                raw = RawTokenizer.from_file(str(tokenizer_json))
                return cls(raw, parse_special=parse_special)
            except Exception as exc:
                raise ModelError(f"{tokenizer_json}: cannot load tokenizer: {exc}") from None
        if vocab.is_file() and merges.is_file():
            try:
                raw = RawTokenizer(models.BPE.from_file(str(vocab), str(merges)))
            except Exception as exc:
                raise ModelError(
                    f"{vocab.parent}: cannot load vocab.json and merges.txt: {exc}"
                ) from None
            raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            raw.decoder = decoders.ByteLevel()
            if raw.token_to_id(ENDOFTEXT) is not None:
                from tokenizers import AddedToken

                raw.add_special_tokens([AddedToken(ENDOFTEXT, special=True)])
            return cls(raw, parse_special=parse_special)
        raise ModelError(f"{directory}: no tokenizer.json, or vocab.json and merges.txt")

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], threads: int | None = None) -> list[list[int]]:
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def token_bytes(self, token_id: int) -> bytes:
        cached = self._bytes_cache.get(token_id)
        if cached is None:
            if token_id in self._specials:
                cached = self._specials[token_id]
            else:
                piece = self._tokenizer.id_to_token(token_id)
                if piece is None:
                    raise InputError(f"token id {token_id} is not in the vocabulary")
                decoder = _byte_decoder()
                cached = bytes(decoder[c] for c in piece)
            self._bytes_cache[token_id] = cached
        return cached


def _gpt2_style(tokenizer) -> bool:  # noqa: ANN001
    """Whether a `tokenizers` tokenizer pre-tokenizes and encodes as GPT-2 does: byte-level BPE
    with GPT-2's regex, no normalizer, and added tokens without whitespace that strip none."""
    from tokenizers import models, pre_tokenizers

    pre, model = tokenizer.pre_tokenizer, tokenizer.model
    if tokenizer.normalizer is not None or not isinstance(model, models.BPE):
        return False
    if not isinstance(pre, pre_tokenizers.ByteLevel) or pre.add_prefix_space or not pre.use_regex:
        return False
    if model.dropout or model.continuing_subword_prefix or model.end_of_word_suffix:
        return False
    return all(
        not a.lstrip and not a.rstrip and a.content and not any(c.isspace() for c in a.content)
        for a in tokenizer.get_added_tokens_decoder().values()
    )


ENCODE_CHUNK_CHARS = 1 << 16  # the chunk size for encoding a long text in pieces
# A run this long with no split point cannot be cut to a head or tail without encoding it whole.
MAX_UNSPLIT_CHARS = 1 << 22


@dataclass(frozen=True)
class Limited:
    """A text's token ids as far as a limit needed them: `ids` (all, or the head or tail kept)
    and `total`, the text's token count, or a lower bound of it when not `exact`."""

    ids: list[int]
    total: int
    exact: bool = True

    @property
    def count(self) -> str:
        """The token count for messages: '1100', or '15000+' when encoding stopped early."""
        return f"{self.total}" if self.exact else f"{self.total}+"


def encode_limited(
    tokenizer: Tokenizer, text: str, limit: int, keep: str, source: str = "input"
) -> Limited:
    """Encode `text` only as far as `limit` tokens need, in chunks that encode exactly as the
    whole text (memory bounded by a chunk, not by the text).

    keep "head": the first `limit` ids; stops at the first chunk past the limit (the total is
    then a lower bound). keep "count": the same, for a text that is refused past the limit: a
    chunk too long to hold `limit` tokens is not encoded at all.
    keep "tail": the last `limit` ids and the exact total; every chunk is encoded, only the
    last ids are kept. Without a split rule (another pre-tokenizer) the text is encoded whole.
    """
    longest = tokenizer.max_token_bytes
    chunks = split_chunks([text], ENCODE_CHUNK_CHARS, tokenizer.split_rule())
    if keep == "tail":
        tail: deque[int] = deque(maxlen=max(limit, 0))
        total = 0
        for ids in encode_stream(tokenizer, _checked(chunks, source)):
            tail.extend(ids)
            total += len(ids)
        return Limited(list(tail), total)
    head: list[int] = []
    for chunk in chunks:
        room = limit + 1 - len(head)
        if keep == "count" and longest and len(chunk) > room * longest:  # tokens <= longest
            return Limited(head[:limit], len(head) + -(-len(chunk) // longest), exact=False)
        head += tokenizer.encode(next(_checked([chunk], source)))
        if len(head) > limit:
            exact = next(chunks, None) is None  # the last chunk: the count is the text's
            return Limited(head[:limit], len(head), exact)
    return Limited(head, len(head))


def _checked(chunks: Iterable[str], source: str) -> Iterator[str]:
    for chunk in chunks:
        if len(chunk) > MAX_UNSPLIT_CHARS:
            raise InputError(
                f"{source}: over {MAX_UNSPLIT_CHARS >> 20}M characters with no point where the "
                "tokenizer's output can be cut; too long to truncate"
            )
        yield chunk


def encode_stream(
    tokenizer: Tokenizer, chunks: Iterable[str], threads: int | None = None, batch: int = 16
) -> Iterator[list[int]]:
    """Encode a stream of independently tokenizable chunks, in order and in parallel.

    With a thread pool, chunks are submitted as they are read, so reading and splitting the
    input overlaps with encoding; at most `batch` chunks are in flight (bounded memory).
    """
    chunks = iter(chunks)
    first = list(islice(chunks, 2))
    if len(first) < 2:  # a short text: no thread pool to start
        yield from (tokenizer.encode(chunk) for chunk in first)
        return
    chunks = chain(first, chunks)
    pool = tokenizer.pool(threads)
    if pool is None:
        while group := list(islice(chunks, batch)):
            yield from tokenizer.encode_batch(group, threads)
        return
    in_flight: deque[Future[list[int]]] = deque()
    for chunk in chunks:
        in_flight.append(pool.submit(tokenizer.encode, chunk))
        if len(in_flight) >= batch:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


def load_tokenizer(model: str | None = None, parse_special: bool = True) -> Tokenizer:
    """The built-in GPT-2 tokenizer, or the tokenizer of `model` (a Hub id or local directory)."""
    if model is None:
        return GPT2Tokenizer(parse_special=parse_special)
    if not model.strip():
        raise InputError(param="model", reason="empty; give a Hub model id or a directory")
    from gpt2cli.model_files import TOKENIZER_FILES, resolve_model_dir

    directory = resolve_model_dir(model, TOKENIZER_FILES)
    return model_tokenizer(directory, parse_special=parse_special)


def token_offsets(pieces: Sequence[bytes]) -> list[tuple[int, int]]:
    """Character spans [start, end) of tokens; a partial UTF-8 piece spans its whole character."""
    spans = []
    started = 0  # characters whose first byte has been seen
    for piece in pieces:
        start = started if piece[0] & 0xC0 != 0x80 else started - 1
        started += sum(1 for byte in piece if byte & 0xC0 != 0x80)
        spans.append((start, started))
    return spans
