"""`data=text_probe`: a small labelled text task for the transfer claim (a char-RNN's representation
helps a supervised task; Radford et al. 2017's sentiment neuron, in small), generated offline.

    train data=text_probe data.lm=RUN_DIR model=char_probe model.encoder=RUN_DIR model.freeze=true

Each sample is a snippet of `snippet_len` characters; its label is a property of the string that
a character language model must track to predict the next character well:

- `shuffled` (the default): is the snippet as written (1), or are its last `shuffle_tail`
  characters put in a random order (0)? Shuffling keeps every character count, so a
  bag-of-characters model cannot tell; it takes knowing what the language's words and syntax look
  like, which a small labelled set cannot teach but next-character prediction does.
- `quote`: the snippet ends inside a double-quoted string (an odd number of `"` in it), so the
  next `"` closes rather than opens one. Parity is not a function of the character counts, so a
  bag-of-characters model cannot read it off; a model must keep the state along the string.
- `paren`: the snippet ends inside an unclosed `(` or `[` (counted from the snippet's start).

The snippets come from the text a char LM run did *not* train on: the blocks after its training
block (its validation and test text), cut into three contiguous parts for this task's own
training, validation and test snippets (overlapping windows within a part, never across parts).
The classes are balanced. With `lm=RUN_DIR` the run's text and vocabulary are used, so the
character ids mean what they meant to the language model; without it, the text at `path` (None:
the built-in text) with the same block fractions as data=text's defaults.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trainer.data import DataSplits
from trainer.data.text import block_bounds, build_vocab, encode, read_text
from trainer.errors import ConfigError, DataError

LABELS = ("shuffled", "quote", "paren")
PARTS = ("train", "val", "test")


def _inside_quote(snippet: str) -> bool:
    return snippet.count('"') % 2 == 1


def _inside_paren(snippet: str) -> bool:
    depth = 0
    for char in snippet:
        if char in "([":
            depth += 1
        elif char in ")]" and depth > 0:
            depth -= 1
    return depth > 0


RULES = {"quote": _inside_quote, "paren": _inside_paren}


def lm_source(lm: str) -> tuple[dict[str, Any], str | None]:
    """The data config of the char LM run `lm` (a run folder or checkpoint file) and its saved vocabulary."""
    from trainer.engine import checkpoint  # torch.load only when a run is named

    try:
        payload, _path, _notices = checkpoint.resolve(lm, Path("."))
    except checkpoint.CheckpointError as error:
        raise ConfigError(str(error).replace(f"resume={lm}", f"data.lm={lm}", 1)) from None
    assert payload is not None
    data = payload["config"]["data"]
    if data.get("name") != "text":
        raise ConfigError(f"data.lm={lm} is a run on data={data.get('name')}; name a character LM run (data=text)")
    return data, payload.get("chars")


def held_out_text(lm: str | None, path: str | None) -> tuple[str, str]:
    """The text no LM training saw (the blocks after the training block) and the vocabulary."""
    fractions = {"val_fraction": 0.05, "test_fraction": 0.05}
    max_chars = None
    if lm is not None:
        source, saved_chars = lm_source(lm)
        path = source.get("path") if path is None else path
        fractions = {key: source[key] for key in fractions}
        max_chars = source.get("max_chars")
    text = read_text(path)[:max_chars]
    chars = build_vocab(text)
    if lm is not None and saved_chars is not None and saved_chars != chars:
        raise DataError(f"data.lm={lm}: its text has changed since the run trained (its vocabulary differs); "
                        "the character ids would not mean what they meant to the model")
    start, _ = block_bounds(len(text), **fractions)
    return text[start:], chars


def shuffled_snippets(text: str, count: int, length: int, tail: int, generator: torch.Generator) -> tuple[list[str], list[int]]:
    """`count` snippets of `text` at random offsets; every other one (label 0) has its last `tail`
    characters put in a random order (a permutation that changes the string), the rest (label 1) are intact."""
    found: list[str] = []
    labels: list[int] = []
    tries = 0
    while len(found) < count:
        tries += 1
        if tries > 100 * count + 1000:
            raise DataError("data=text_probe: too few snippets whose end can be shuffled; use a longer text")
        start = int(torch.randint(len(text) - length + 1, (1,), generator=generator))
        snippet = text[start : start + length]
        cls = len(found) % 2
        if cls == 0:
            end = snippet[-tail:]
            scrambled = "".join(end[i] for i in torch.randperm(len(end), generator=generator).tolist())
            if scrambled == end:
                continue
            snippet = snippet[:-tail] + scrambled
        found.append(snippet)
        labels.append(cls)
    order = torch.randperm(count, generator=generator).tolist()
    return [found[i] for i in order], [labels[i] for i in order]


def snippets(text: str, count: int, length: int, label: str, generator: torch.Generator) -> tuple[list[str], list[int]]:
    """`count` snippets of `text` at random offsets, half of each class (the rule `label` names)."""
    if len(text) <= length:
        raise DataError(f"data=text_probe: a part of the held-out text holds {len(text)} characters, too few for "
                        f"snippets of data.snippet_len={length}; use a longer text or shorter snippets")
    wanted = [count // 2, count - count // 2]
    chosen: list[list[str]] = [[], []]
    tries = 0
    while any(len(found) < want for found, want in zip(chosen, wanted)):
        tries += 1
        if tries > 200 * count + 1000:
            raise DataError(f"data=text_probe: too few snippets of class {'quote' if label == 'quote' else label} in "
                            "this text; try the other data.label or a longer text")
        start = int(torch.randint(len(text) - length + 1, (1,), generator=generator))
        snippet = text[start : start + length]
        cls = int(RULES[label](snippet))
        if len(chosen[cls]) < wanted[cls]:
            chosen[cls].append(snippet)
    pairs = [(snippet, cls) for cls in (0, 1) for snippet in chosen[cls]]
    order = torch.randperm(len(pairs), generator=generator).tolist()
    return [pairs[i][0] for i in order], [pairs[i][1] for i in order]


def build(lm: str | None = None, path: str | None = None, label: str = "shuffled", snippet_len: int = 64,
          num_train: int = 100, num_val: int = 500, num_test: int = 1000, shuffle_tail: int = 32, seed: int = 0) -> DataSplits:
    """Args:
        lm: a char LM run (folder or checkpoint): its text's held-out blocks and its vocabulary.
        path: a UTF-8 text file instead of (or, with lm, in place of) the run's text; None: the run's,
            or the built-in text.
        label: shuffled, quote or paren (see the module's docstring).
        snippet_len: characters per snippet.
        num_train: labelled training snippets (small: the point is learning from few labels).
        num_val: validation snippets.
        num_test: test snippets, evaluated once at the end (0: none).
        shuffle_tail: for label=shuffled, how many of a snippet's last characters are permuted.
        seed: the snippets' own generator (the global RNG is untouched).
    """
    if label not in LABELS:
        raise ConfigError(f"data.label={label!r} is unknown; valid: {', '.join(LABELS)}")
    if snippet_len < 1:
        raise ConfigError(f"data.snippet_len={snippet_len} must be at least 1")
    # snippet[-0:] is the whole snippet, and one character has no other order: 0, 1 or a tail past the
    # snippet's start would shuffle something else than asked, or never.
    if label == "shuffled" and not 2 <= shuffle_tail <= snippet_len:
        raise ConfigError(f"data.shuffle_tail={shuffle_tail} must be from 2 to data.snippet_len={snippet_len} "
                          "(the last characters that are permuted)")
    for key, value, minimum in (("num_train", num_train, 2), ("num_val", num_val, 2), ("num_test", num_test, 0)):
        if value < minimum:
            raise ConfigError(f"data.{key}={value} must be at least {minimum}")
    text, chars = held_out_text(lm, path)
    generator = torch.Generator().manual_seed(seed)
    third = len(text) // 3
    parts = dict(zip(PARTS, (text[:third], text[third : 2 * third], text[2 * third :])))
    splits: dict[str, tuple[torch.Tensor, torch.Tensor] | tuple[None, None]] = {}
    for name, count in zip(PARTS, (num_train, num_val, num_test)):
        if count == 0:
            splits[name] = (None, None)
            continue
        if label == "shuffled":
            found, labels = shuffled_snippets(parts[name], count, snippet_len, shuffle_tail, generator)
        else:
            found, labels = snippets(parts[name], count, snippet_len, label, generator)
        splits[name] = (torch.stack([encode(s, chars) for s in found]), torch.tensor(labels, dtype=torch.int64))
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (splits[name] for name in PARTS)
    assert x_train is not None and y_train is not None and x_val is not None and y_val is not None
    return DataSplits(x_train, y_train, x_val, y_val, task="classification", num_outputs=2,
                      x_test=x_test, y_test=y_test, chars=chars)
