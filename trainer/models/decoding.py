"""Free-running decoding at evaluation, one builder per `decoding=` choice, and the two accuracies.

A decoder trained with teacher forcing is measured here on what it produces from its own
predictions: greedy (the most likely next token at each step), or beam search (Graves 2012;
Sutskever et al. 2014): keep the `beam_size` most likely partial outputs at each step, finish a
hypothesis when it emits EOS, and return the finished one with the best score

    log P(y) / lp(y),   lp(y) = ((5 + |y|) / 6) ** length_penalty   (Wu et al. 2016, GNMT)

where |y| counts the tokens produced, EOS included. length_penalty = 0 is the plain probability,
which favours short outputs; larger values favour longer ones.

A finished hypothesis keeps its beam slot (the beam does not refill), so a beam of 1 is exactly
greedy decoding and a beam as wide as the whole tree is exhaustive search.

Decoding needs a model with `encode(source) -> memory` and `decode_step(token, state, memory)
-> (logits, state)` (models/seq2seq.py); outputs are (N, max_len) token ids, EOS included, PAD after.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.data.seq2seq import BOS, EOS, IGNORE_INDEX, PAD
from trainer.errors import ConfigError
from trainer.models.seq2seq import LayerState, Memory, Seq2Seq, select_state

# Tokens a decoder must never produce: they mark structure, not output.
NEVER_PRODUCED = (PAD, BOS)

def length_penalty(length: torch.Tensor | int, alpha: float) -> torch.Tensor | float:
    """GNMT's lp(length) = ((5 + length) / 6) ** alpha; 1 at length 1 and at alpha 0."""
    return ((5 + length) / 6) ** alpha


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    log_probs = logits.float().log_softmax(-1)
    log_probs[:, list(NEVER_PRODUCED)] = float("-inf")
    return log_probs


def _start(model: Seq2Seq, source: torch.Tensor) -> tuple[Memory, list[LayerState], torch.Tensor]:
    """The encoded source, the decoder's first state and its first input (BOS)."""
    memory = model.encode(source)
    return memory, memory.state, torch.full((len(source),), BOS, dtype=torch.long, device=source.device)


@torch.no_grad()
def greedy(model: Seq2Seq, source: torch.Tensor, max_len: int) -> torch.Tensor:
    """The most likely token at each step, until EOS or `max_len` tokens."""
    memory, state, token = _start(model, source)
    output = torch.full((len(source), max_len), PAD, dtype=torch.long, device=source.device)
    done = torch.zeros(len(source), dtype=torch.bool, device=source.device)
    for t in range(max_len):
        logits, state = model.decode_step(token, state, memory)
        token = _log_probs(logits).argmax(-1)
        output[:, t] = torch.where(done, PAD, token)
        done |= token == EOS
        if bool(done.all()):
            break
    return output


@torch.no_grad()
def beam_search(model: Seq2Seq, source: torch.Tensor, max_len: int, beam_size: int, alpha: float) -> torch.Tensor:
    """The best finished hypothesis of a beam of `beam_size`, by log P / lp(length) (module docstring).

    Every source is searched at once: its beam occupies `beam_size` rows of the decoder's batch."""
    n, device = len(source), source.device
    memory, state, token = _start(model, source)
    rows = torch.arange(n, device=device).repeat_interleave(beam_size)
    memory, state, token = memory.select(rows), select_state(state, rows), token[rows]
    # Only the first slot of each beam starts alive; the others would duplicate it.
    score = torch.full((n, beam_size), float("-inf"), device=device)
    score[:, 0] = 0.0
    tokens = torch.full((n, beam_size, max_len), PAD, dtype=torch.long, device=device)
    best = torch.full((n,), float("-inf"), device=device)
    best_tokens = torch.full((n, max_len), PAD, dtype=torch.long, device=device)
    for t in range(max_len):
        logits, state = model.decode_step(token, state, memory)
        vocab = logits.shape[-1]
        candidates = (score.unsqueeze(-1) + _log_probs(logits).view(n, beam_size, vocab)).view(n, -1)
        score, flat = candidates.topk(beam_size, dim=-1)  # dead slots are -inf and sort last
        slot, token = flat // vocab, flat % vocab
        tokens = tokens.gather(1, slot.unsqueeze(-1).expand(-1, -1, max_len)).clone()
        tokens[:, :, t] = token
        alive = torch.isfinite(score)
        # A hypothesis ends at EOS, or at max_len: compare it with the best ended one by its normalised score.
        ended = alive & ((token == EOS) | (t == max_len - 1))
        normalised = torch.where(ended, score / length_penalty(t + 1, alpha), float("-inf"))
        top, top_slot = normalised.max(dim=1)
        better = top > best
        best = torch.where(better, top, best)
        best_tokens[better] = tokens[better, top_slot[better]]
        score = score.masked_fill(ended, float("-inf"))  # an ended hypothesis keeps its slot, dead
        if not bool(torch.isfinite(score).any()):
            break
        order = (torch.arange(n, device=device).unsqueeze(1) * beam_size + slot).view(-1)
        # Each hypothesis continues from its parent's state (the memory rows of one source are
        # identical copies, so they need no reordering).
        state, token = select_state(state, order), token.view(-1)
    return best_tokens


# ---- the two accuracies -----------------------------------------------------------------------

def token_accuracy(predicted: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """(correct, counted): target positions (EOS included, IGNORE_INDEX excluded) where the
    prediction holds the same token at the same position."""
    counted = target != IGNORE_INDEX
    return int(((predicted == target) & counted).sum()), int(counted.sum())


def sequence_accuracy(predicted: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """(correct, counted): sequences predicted exactly, EOS included (so neither shorter nor longer)."""
    counted = target != IGNORE_INDEX
    exact = ((predicted == target) | ~counted).all(dim=1)
    return int(exact.sum()), len(target)


# ---- the `decoding=` group ------------------------------------------------------------------

@dataclass(frozen=True)
class Decoding:
    """How evaluation decodes: `beam_size` 1 is greedy."""

    name: str
    beam_size: int = 1
    length_penalty: float = 0.0

    def __call__(self, model: Seq2Seq, source: torch.Tensor, max_len: int) -> torch.Tensor:
        if self.beam_size == 1:
            return greedy(model, source, max_len)
        return beam_search(model, source, max_len, self.beam_size, self.length_penalty)

    def accuracy(self, model: Seq2Seq, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> dict[str, float]:
        """Token and whole-sequence accuracy of the decoded outputs of `inputs` (x of data/seq2seq.py)."""
        tokens, sequences = [0, 0], [0, 0]
        for start in range(0, len(inputs), batch_size):
            source, target = inputs[start : start + batch_size, 0], targets[start : start + batch_size]
            predicted = self(model, source, target.shape[1])
            for total, (correct, counted) in ((tokens, token_accuracy(predicted, target)),
                                              (sequences, sequence_accuracy(predicted, target))):
                total[0] += correct
                total[1] += counted
        return {"token_acc": tokens[0] / max(tokens[1], 1), "seq_acc": sequences[0] / max(sequences[1], 1)}


def greedy_decoding() -> Decoding:
    """Builder named by conf/decoding/greedy.yaml."""
    return Decoding("greedy")


def beam(beam_size: int = 5, length_penalty: float = 1.0) -> Decoding:
    """Builder named by conf/decoding/beam.yaml."""
    if beam_size < 1:
        raise ConfigError(f"decoding.beam_size={beam_size} must be >= 1 (1 is greedy decoding)")
    if length_penalty < 0:
        raise ConfigError(f"decoding.length_penalty={length_penalty} must be >= 0 (0: none; GNMT used 0.6-1.0)")
    return Decoding("beam", beam_size, float(length_penalty))
