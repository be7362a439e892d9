"""`data=text`: a plain-text file as a character language-modelling task (next-character prediction).

    train data=text model=char_lstm                       # the built-in text: Python's own docs topics
    train data=text data.path=shakespeare.txt model=char_lstm

The text is split into three contiguous blocks, training first, then validation, then test, and
each block is cut into its own sequences, so no character of the validation or test text is ever
a training input or target (a random split of overlapping windows would leak). A sample is
`seq_len` characters and its target is the same window shifted by one: x (N, seq_len) and
y (N, seq_len), int64 ids into the vocabulary. The vocabulary is every character of the file,
sorted (the character *set* only, so no text leaks from the held-out blocks; it means no
held-out character is unknown to the model); the run saves it as `vocab.json` and in its
checkpoints, so sampling and the transfer probe decode with exactly the run's ids.

The default text needs no download: the `pydoc_data.topics` module that every CPython
installation carries for `help()` (about 465 k characters of English prose about the language,
with code examples: the reference manual's topics, `help("assert")`). Its topics are joined in
sorted order, so the same Python version gives the same text everywhere.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from trainer.data import DataSplits
from trainer.errors import ConfigError, DataError

DEFAULT_SOURCE = "pydoc_data.topics (Python's help() topics)"


def default_text() -> str:
    """The built-in text: CPython's help() topics, joined in sorted order (deterministic per version)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a stripped Python without pydoc_data: say what to do instead
        raise DataError("data=text: this Python has no pydoc_data.topics (the built-in text); "
                        "name a UTF-8 text file with data.path=FILE") from None
    return "\n\n".join(topics[key].strip() for key in sorted(topics))


def read_text(path: str | None) -> str:
    """The file's text (the built-in text for None); a missing, empty or non-UTF-8 file is one line."""
    if path is None:
        return default_text()
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"data.path={path} is not a file; give a UTF-8 text file (or leave data.path unset "
                        f"for the built-in text, {DEFAULT_SOURCE})")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"data.path={path} is not UTF-8 text (byte {error.start} cannot be decoded); "
                        "convert it, e.g. iconv -t utf-8") from None
    except OSError as error:
        raise DataError(f"data.path={path} cannot be read: {error.strerror}") from None
    if not text:
        raise DataError(f"data.path={path} is empty; give a UTF-8 text file with some text in it")
    return text


def build_vocab(text: str) -> str:
    """The vocabulary: every distinct character, sorted; a character's id is its index."""
    return "".join(sorted(set(text)))


def encode(text: str, chars: str) -> torch.Tensor:
    """int64 ids of `text` under the vocabulary `chars`; a character outside it is a one-line error."""
    index = {char: i for i, char in enumerate(chars)}
    try:
        return torch.tensor([index[char] for char in text], dtype=torch.int64)
    except KeyError as error:
        raise DataError(f"the character {error.args[0]!r} is not in the vocabulary of {len(chars)} characters") from None


def decode(ids: torch.Tensor | list[int], chars: str) -> str:
    return "".join(chars[int(i)] for i in ids)


def block_bounds(length: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Where the training block ends and the validation block ends: [0, a) train, [a, b) val, [b, length) test."""
    val_start = length - round(length * (val_fraction + test_fraction))
    test_start = length - round(length * test_fraction)
    return val_start, test_start


def block_lengths(length: int, val_fraction: float, test_fraction: float) -> list[int]:
    """The lengths of the blocks a text of `length` characters is split into (train, val[, test])."""
    val_start, test_start = block_bounds(length, val_fraction, test_fraction)
    return [val_start, test_start - val_start] + ([length - test_start] if test_fraction else [])


def shortest_text(seq_len: int, val_fraction: float, test_fraction: float) -> int:
    """The fewest characters whose every block holds one sequence (seq_len + 1 characters: inputs and targets)."""
    shares = [share for share in (1 - val_fraction - test_fraction, val_fraction, test_fraction) if share]
    length = max(math.ceil((seq_len + 1) / share) for share in shares)
    while min(block_lengths(length, val_fraction, test_fraction)) <= seq_len:  # rounding can leave one short
        length += 1
    return length


def windows(ids: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping inputs of `seq_len` ids and their next-character targets, (N, seq_len) each.
    Consecutive windows start seq_len apart, so every character of the block is a target once."""
    count = (len(ids) - 1) // seq_len
    x = ids[: count * seq_len].reshape(count, seq_len)
    y = ids[1 : count * seq_len + 1].reshape(count, seq_len)
    return x, y


def build(path: str | None = None, seq_len: int = 128, val_fraction: float = 0.05, test_fraction: float = 0.05,
          max_chars: int | None = None) -> DataSplits:
    """The text at `path` (None: the built-in text) as next-character sequences.

    Args:
        path: a UTF-8 text file; None for CPython's help() topics.
        seq_len: characters per sample (the steps back-propagated through).
        val_fraction: the share of the text, after the training block, that validates.
        test_fraction: the share at the end of the text, evaluated once when the run ends (0: none).
        max_chars: use only the first N characters of the text (a quicker run); None: all of it.
    """
    if seq_len < 1:
        raise ConfigError(f"data.seq_len={seq_len} must be at least 1")
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError(f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be in "
                          "(0, 1) and [0, 1) with a sum below 1 (the rest is the training text)")
    if max_chars is not None and max_chars < 1:
        raise ConfigError(f"data.max_chars={max_chars} must be at least 1, or null for the whole text")
    text = read_text(path)[:max_chars]
    chars = build_vocab(text)
    ids = encode(text, chars)
    val_start, test_start = block_bounds(len(ids), val_fraction, test_fraction)
    blocks = {"train": ids[:val_start], "val": ids[val_start:test_start], "test": ids[test_start:]}
    for name in ("train", "val") + (("test",) if test_fraction else ()):
        if len(blocks[name]) <= seq_len:
            raise DataError(f"data=text: the {name} block holds {len(blocks[name])} characters, too few for one "
                            f"sequence of data.seq_len={seq_len}; use a text of at least "
                            f"{shortest_text(seq_len, val_fraction, test_fraction)} characters or a smaller data.seq_len")
    x_train, y_train = windows(blocks["train"], seq_len)
    x_val, y_val = windows(blocks["val"], seq_len)
    x_test, y_test = windows(blocks["test"], seq_len) if test_fraction else (None, None)
    return DataSplits(x_train, y_train, x_val, y_val, task="classification", num_outputs=len(chars),
                      x_test=x_test, y_test=y_test, chars=chars)


def bits_per_char(loss_nats: float) -> float:
    """A character LM's mean cross-entropy (nats, natural log) in bits per character: loss / ln 2."""
    return loss_nats / math.log(2)
