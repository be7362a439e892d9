"""`model=char_lstm`: a character-level LSTM language model (Karpathy's char-RNN), and sampling from it.

    ids (N, L) -> embedding -> [input dropout] -> LSTM x layers (dropout between layers)
               -> norm -> [dropout] -> linear head -> logits (N, vocab, L)

The logits put the vocabulary on dim 1, the layout F.cross_entropy takes for (N, C, L) inputs and
(N, L) targets, so the training loop's loss and its argmax(dim=1) accuracy (next-character
accuracy here) work unchanged. The RNN tricks apply as they do to `model=rnn`: the init group sets
the LSTM's forget-gate bias to 1 and its recurrent weights orthogonal (any scheme but default and
zeros), and dropout is only on non-recurrent connections (Zaremba et al. 2014): on the embeddings
(`regularisation.input_dropout`), between stacked layers and before the head
(`regularisation.dropout`); never on the hidden-to-hidden path, which nn.LSTM never drops.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainer.data.text import encode
from trainer.errors import ConfigError
from trainer.models import check_at_least, check_probability, dropout_layers
from trainer.tricks.norm import NormFactory

State = tuple[torch.Tensor, torch.Tensor]


class CharLSTM(nn.Module):
    """Embedding, LSTM, norm and dropout, and a per-step head over the vocabulary."""

    def __init__(self, embedding: nn.Embedding, input_dropout: nn.Sequential, rnn: nn.LSTM, post: nn.Sequential,
                 head: nn.Linear) -> None:
        super().__init__()
        self.embedding = embedding
        self.input_dropout = input_dropout
        self.rnn = rnn
        self.post = post  # norm(hidden, 1) and dropout, applied in the (N, hidden, L) layout
        self.head = head
        self.activation = "tanh"  # the cell's non-linearity: the gain init gives the input weights

    def features(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """The last layer's outputs (N, L, hidden) after norm and dropout, and the LSTM's final state."""
        out, state = self.rnn(self.input_dropout(self.embedding(ids)), state)
        return self.post(out.transpose(1, 2)).transpose(1, 2), state

    def step_logits(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits (N, L, vocab) for each position of `ids` (N, L), continuing from `state` (sampling)."""
        out, state = self.features(ids, state)
        return self.head(out), state

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.step_logits(ids)[0].transpose(1, 2)  # (N, vocab, L)


def check_token_input(model: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 1 or input_shape[0] < 1:
        raise ConfigError(f"model={model} reads character ids (N, L); this data set gives input_shape "
                          f"{tuple(input_shape)}: use data=text")


def build(*, input_shape: tuple[int, ...], num_outputs: int, norm: NormFactory, dropout: float,
          input_dropout: float, vocab_size: int | None = None, activation: str = "tanh", embedding: int = 64,
          hidden: int = 256, layers: int = 2) -> CharLSTM:
    """Args: embedding: the size of each character's vector; hidden: the LSTM's state size;
    layers: stacked LSTM layers. `vocab_size` (the characters it reads) comes from the data, as does
    `num_outputs` (the characters it predicts: the same ones for data=text). `activation` is the
    LSTM cell's own, tanh, the only value accepted."""
    check_token_input("char_lstm", input_shape)
    if vocab_size is None:
        raise ConfigError("model=char_lstm reads character ids: use data=text")
    if activation != "tanh":
        raise ConfigError(f"model.activation={activation!r} is not available with model=char_lstm "
                          "(the LSTM cell's non-linearity is tanh); valid: tanh")
    for key, value in (("model.embedding", embedding), ("model.hidden", hidden), ("model.layers", layers),
                       ("num_outputs", num_outputs)):
        check_at_least(key, value, 1)
    check_probability("regularisation.dropout", dropout)
    check_probability("regularisation.input_dropout", input_dropout)
    rnn = nn.LSTM(embedding, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
    post = nn.Sequential(norm(hidden, 1), *dropout_layers(dropout))
    return CharLSTM(nn.Embedding(vocab_size, embedding), nn.Sequential(*dropout_layers(input_dropout)), rnn,
                    post, nn.Linear(hidden, num_outputs))


def check_sample_settings(*, length: object, temperature: object, prime: object, count: object = 1,
                          chars: str | None = None) -> None:
    """The `sample:` settings, checked before anything reads them: a data=text run checks them
    before it trains (its samples are drawn after the last epoch, and a bad value found there would
    cost the run its summary), task=sample before it loads the run. `chars`: the run's vocabulary,
    which the prime must be written in, once it is known."""
    for key, value in (("length", length), ("count", count)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"sample.{key}={value!r} must be an integer >= 1")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature >= 0:
        raise ConfigError(f"sample.temperature={temperature!r} must be a number >= 0 (0: always the most likely character)")
    if not isinstance(prime, str):  # Hydra reads sample.prime=123 as a number
        raise ConfigError(f"sample.prime={prime!r} must be text; quote it: sample.prime='{prime}'")
    unknown = sorted(set(prime) - set(chars)) if chars is not None else []
    if unknown:
        raise ConfigError(f"sample.prime={prime!r} holds {unknown[0]!r}, which is not in the run's vocabulary")


@torch.no_grad()
def sample(model: CharLSTM, chars: str, length: int, temperature: float = 1.0, prime: str = "",
           seed: int = 0) -> str:
    """`length` characters drawn from the model one at a time, each fed back as the next input.

    Args:
        chars: the run's vocabulary (character i is id i).
        temperature: the logits are divided by it before the softmax: below 1 more conservative,
            above 1 more varied; 0 takes the most likely character every time.
        prime: text the model reads first (returned as the sample's start); "" draws the first
            character uniformly from the vocabulary.
        seed: seeds the draws' own generator (the global RNG is untouched): the same seed, model
            and settings give the same text.
    """
    check_sample_settings(length=length, temperature=temperature, prime=prime, chars=chars)
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    ids = encode(prime, chars) if prime else torch.randint(len(chars), (1,), generator=generator)
    was_training = model.training
    model.eval()
    try:
        logits, state = model.step_logits(ids.unsqueeze(0).to(device))
        drawn: list[int] = []
        for _ in range(length):
            last = logits[0, -1].float().cpu()
            if temperature == 0:
                token = int(last.argmax())
            else:
                token = int(torch.multinomial(F.softmax(last / temperature, dim=0), 1, generator=generator))
            drawn.append(token)
            logits, state = model.step_logits(torch.tensor([[token]], device=device), state)
    finally:
        model.train(was_training)
    start = prime if prime else chars[int(ids[0])]
    return start + "".join(chars[token] for token in drawn)
