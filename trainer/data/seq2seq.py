"""Generated sequence-to-sequence tasks over a small vocabulary: copy, reverse, sort, add.

    copy     3 1 4 1 5   ->  3 1 4 1 5    (the target in the source's order, as translation mostly is)
    reverse  3 1 4 1 5   ->  5 1 4 1 3
    sort     3 1 4 1 5   ->  1 1 3 4 5
    add      1 2 + 3 4 9 ->  3 6 1        (numbers written most significant digit first, base `symbols`)

Every example is drawn from a `random.Random(seed)` (the global RNGs are untouched) and kept
only if its source was not drawn before, so train, validation and test share no source; the
test split is drawn last, so train and validation are the same with or without it.

What the loop receives (the loop batches by indexing one tensor, and the decoder needs both
sequences, so they travel together):

    x  (N, 2, L) int64: row 0 the source, row 1 the decoder's input (BOS, then the target), PAD after
    y  (N, L)    int64: the target, then EOS; IGNORE_INDEX after, which F.cross_entropy skips

L is the longest source or target (+1) the settings allow, the same for every split.
"""
from __future__ import annotations

import random
from collections.abc import Callable

import torch

from trainer.data import DataSplits
from trainer.errors import ConfigError

PAD, BOS, EOS = 0, 1, 2
FIRST_SYMBOL = 3  # token id of symbol 0 (digit 0 for `add`)
IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: target positions past EOS count nowhere
TASKS = ("copy", "reverse", "sort", "add")

Example = tuple[tuple[int, ...], tuple[int, ...]]  # (source symbols, target symbols), without BOS/EOS


def vocab_size(task: str, symbols: int) -> int:
    """PAD, BOS, EOS, the symbols, and `+` for addition."""
    return FIRST_SYMBOL + symbols + (1 if task == "add" else 0)


def plus_token(symbols: int) -> int:
    return FIRST_SYMBOL + symbols


def _digits(value: int, base: int) -> tuple[int, ...]:
    """`value` in `base`, most significant digit first (0 is one digit)."""
    digits = [value % base]
    while value >= base:
        value //= base
        digits.append(value % base)
    return tuple(reversed(digits))


def _draw_sequence(rng: random.Random, symbols: int, min_len: int, max_len: int) -> tuple[int, ...]:
    return tuple(rng.randrange(symbols) for _ in range(rng.randint(min_len, max_len)))


def _draw_number(rng: random.Random, base: int, min_len: int, max_len: int) -> int:
    """A number of min_len..max_len digits (length drawn uniformly, no leading zero)."""
    length = rng.randint(min_len, max_len)
    low = 0 if length == 1 else base ** (length - 1)
    return rng.randrange(low, base**length)


def drawer(task: str, symbols: int, min_len: int, max_len: int) -> Callable[[random.Random], Example]:
    """A function that draws one (source, target) example of `task`."""
    if task == "copy":
        def draw(rng: random.Random) -> Example:
            source = _draw_sequence(rng, symbols, min_len, max_len)
            return source, source
    elif task == "reverse":
        def draw(rng: random.Random) -> Example:
            source = _draw_sequence(rng, symbols, min_len, max_len)
            return source, source[::-1]
    elif task == "sort":
        def draw(rng: random.Random) -> Example:
            source = _draw_sequence(rng, symbols, min_len, max_len)
            return source, tuple(sorted(source))
    else:
        plus = symbols  # `+` is the symbol after the digits
        def draw(rng: random.Random) -> Example:
            a, b = (_draw_number(rng, symbols, min_len, max_len) for _ in range(2))
            return _digits(a, symbols) + (plus,) + _digits(b, symbols), _digits(a + b, symbols)
    return draw


def distinct_sources(task: str, symbols: int, min_len: int, max_len: int) -> int:
    """How many different sources the settings allow (generation needs at least as many as it draws)."""
    lengths = range(min_len, max_len + 1)
    if task == "add":
        numbers = sum(symbols**n - (symbols ** (n - 1) if n > 1 else 0) for n in lengths)
        return numbers**2
    return sum(symbols**n for n in lengths)


def max_lengths(task: str, max_len: int) -> tuple[int, int]:
    """The longest source and the longest target (without EOS) the settings allow."""
    if task == "add":
        return 2 * max_len + 1, max_len + 1
    return max_len, max_len


def encode(examples: list[Example], width: int, reverse_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token tensors x (N, 2, width) and y (N, width) of `examples` (layout in the module docstring)."""
    x = torch.full((len(examples), 2, width), PAD, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (source, target) in enumerate(examples):
        if reverse_input:
            source = source[::-1]  # Sutskever et al. 2014: the source only; the target stays in order
        x[row, 0, : len(source)] = torch.tensor(source) + FIRST_SYMBOL
        tokens = torch.tensor(target, dtype=torch.long) + FIRST_SYMBOL
        x[row, 1, 0] = BOS
        x[row, 1, 1 : len(target) + 1] = tokens
        y[row, : len(target)] = tokens
        y[row, len(target)] = EOS
    return x, y


def _check(task: str, symbols: int, min_len: int, max_len: int, counts: dict[str, int]) -> None:
    if task not in TASKS:
        raise ConfigError(f"data.task={task!r} is unknown; valid: {', '.join(TASKS)}")
    if symbols < 2:
        raise ConfigError(f"data.symbols={symbols} must be at least 2")
    if min_len < 1:
        raise ConfigError(f"data.min_len={min_len} must be at least 1")
    if max_len < min_len:
        raise ConfigError(f"data.max_len={max_len} must be at least data.min_len={min_len}")
    for key, value in counts.items():
        if value < (0 if key == "num_test" else 1):
            raise ConfigError(f"data.{key}={value} must be at least {0 if key == 'num_test' else 1}")
    wanted = sum(counts.values())
    available = distinct_sources(task, symbols, min_len, max_len)
    # Rejection sampling slows down as the space fills: ask for at most half of it.
    if wanted > available / 2:
        raise ConfigError(f"data.task={task} with {symbols} symbols and lengths {min_len}..{max_len} has "
                          f"{available} distinct sources, fewer than twice the {wanted} disjoint examples asked for: "
                          "raise data.max_len or data.symbols, or lower the counts")


def build(
    task: str = "reverse",
    symbols: int = 10,
    min_len: int = 3,
    max_len: int = 8,
    reverse_input: bool = False,
    num_train: int = 5000,
    num_val: int = 500,
    num_test: int = 500,
    seed: int = 0,
) -> DataSplits:
    """Args:
        task: copy, reverse, sort or add (two numbers of min_len..max_len digits each).
        symbols: distinct symbols (the base of the numbers for `add`).
        min_len: shortest source sequence (or number, for `add`).
        max_len: longest.
        reverse_input: feed the source reversed, the target intact (Sutskever et al. 2014).
        num_train: training examples.
        num_val: validation examples.
        num_test: test examples, evaluated once at the end (0: none).
        seed: seed of the generator.
    """
    counts = {"num_train": num_train, "num_val": num_val, "num_test": num_test}
    _check(task, symbols, min_len, max_len, counts)
    rng, draw, seen = random.Random(seed), drawer(task, symbols, min_len, max_len), set()
    splits: list[list[Example]] = []
    for count in counts.values():
        examples: list[Example] = []
        while len(examples) < count:
            example = draw(rng)
            if example[0] not in seen:
                seen.add(example[0])
                examples.append(example)
        splits.append(examples)
    source_len, target_len = max_lengths(task, max_len)
    width = max(source_len, target_len + 1)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (encode(s, width, reverse_input) for s in splits)
    return DataSplits(
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
        task="classification", num_outputs=vocab_size(task, symbols),
        x_test=x_test if num_test else None, y_test=y_test if num_test else None,
    )

