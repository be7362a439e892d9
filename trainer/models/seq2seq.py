"""Encoder-decoder for the seq2seq data (data/seq2seq.py): x (N, 2, L) token ids -> logits (N, vocab, L).

    source -> embedding -> encoder stack (LSTM / GRU / RNN, uni- or bidirectional)
                                 | final states start the decoder; outputs are the attention memory
    previous token -> embedding -> decoder stack -> [attention] -> head -> next-token logits

The seed's switches (Britz et al. 2017, Sutskever et al. 2014): the cell; embedding size; layers;
a bidirectional encoder (each direction half the hidden size, concatenated, so the decoder and the
parameter count match the unidirectional one); attention none, additive (Bahdanau et al. 2015:
the previous decoder state queries the memory, the context joins the decoder's input) or
multiplicative (Luong et al. 2015, "general": the new decoder state queries, the context and state
combine through tanh); residual connections between stacked layers, none, previous (each layer
adds its input) or dense (each layer adds the inputs of every layer below it too); shared (one embedding
and one recurrent stack for both sides) or separate encoder and decoder weights.

Training feeds the decoder the true previous token with probability `teacher_forcing_ratio`
(set each step by the teacher_forcing group), else its own previous prediction (Bengio et al.
2015). In eval mode it always feeds the true tokens: the validation loss is the teacher-forced
one; free-running decoding (greedy, beam) is `models/decoding.py`'s, through `encode` and `decode_step`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from trainer.data.seq2seq import PAD
from trainer.errors import ConfigError
from trainer.models import check_at_least, check_probability, dropout_layers
from trainer.models.time_steps import time_steps
from trainer.tricks.norm import NormFactory

CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
ATTENTIONS = ("none", "additive", "multiplicative")
RESIDUALS = ("none", "previous", "dense")

# One layer's recurrent state: h (1, N, H), or (h, c) for the LSTM.
LayerState = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def convert_state(state: list[LayerState], cell: str) -> list[LayerState]:
    """The encoder's final states as a decoder of `cell` takes them: an LSTM's (h, c) gives a GRU or
    plain RNN its h; a GRU's or RNN's h starts an LSTM with an empty memory cell c."""
    if cell == "lstm":
        return [layer if isinstance(layer, tuple) else (layer, torch.zeros_like(layer)) for layer in state]
    return [layer[0] if isinstance(layer, tuple) else layer for layer in state]


def select_state(state: list[LayerState], index: torch.Tensor) -> list[LayerState]:
    """The state of the batch rows `index` (beam search reorders and copies hypotheses)."""
    return [tuple(part[:, index] for part in layer) if isinstance(layer, tuple) else layer[:, index]
            for layer in state]


class RecurrentStack(nn.Module):
    """`layers` single-layer RNNs, run one after the other, with residual connections between them.

    Args:
        residual: none; previous: layer l >= 2 adds its input to its output, x_(l+1) = h_l(x_l) + x_l
            (Wu et al. 2016); dense: it adds the inputs of every layer from the second up to it,
            x_(l+1) = h_l(x_l) + x_2 + ... + x_l (ResD, Britz et al. 2017). The first layer's input
            is the embedding, of another size, so neither starts before the second layer.
        dropout: on the connections between layers (not the recurrent ones: Zaremba et al. 2014).
    """

    def __init__(self, cell: str, input_size: int, hidden: int, layers: int, residual: str,
                 dropout: float, bidirectional: bool) -> None:
        super().__init__()
        per_direction = hidden // 2 if bidirectional else hidden
        options = {"nonlinearity": "tanh"} if cell == "rnn" else {}
        self.layers = nn.ModuleList(
            CELLS[cell](input_size if i == 0 else hidden, per_direction, batch_first=True,
                        bidirectional=bidirectional, **options)
            for i in range(layers))
        self.between = nn.Sequential(*dropout_layers(dropout))
        self.residual, self.bidirectional = residual, bidirectional

    def forward(self, inputs: torch.Tensor, state: list[LayerState] | None = None,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, list[LayerState]]:
        """inputs (N, T, input_size) -> outputs (N, T, hidden) and each layer's final state (1, N, hidden).
        With `lengths`, each row's steps past its length are padding the RNN never reads."""
        x, hidden_inputs, final = inputs, [], []
        for i, rnn in enumerate(self.layers):
            out, last = self._run(rnn, self.between(x) if i else x, state[i] if state else None, lengths)
            final.append(self._join_directions(last))
            if i:  # from the second layer on, a layer's input has its output's size: it can be added
                hidden_inputs.append(x)
            if not hidden_inputs or self.residual == "none":
                x = out
            elif self.residual == "previous":
                x = out + x
            else:  # dense: the inputs of this layer and of every one below it that can be added
                x = out + torch.stack(hidden_inputs).sum(0)
        return x, final

    @staticmethod
    def _run(rnn: nn.RNNBase, x: torch.Tensor, state: LayerState | None,
             lengths: torch.Tensor | None) -> tuple[torch.Tensor, LayerState]:
        if lengths is None:
            return rnn(x, state)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, last = rnn(packed, state)
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], last

    def _join_directions(self, last: LayerState) -> LayerState:
        """(2, N, H/2) forward and backward final states -> (1, N, H), the decoder's layout."""
        if not self.bidirectional:
            return last
        join = lambda s: torch.cat([s[0], s[1]], dim=-1).unsqueeze(0)  # noqa: E731
        return tuple(join(s) for s in last) if isinstance(last, tuple) else join(last)


class AdditiveAttention(nn.Module):
    """Bahdanau et al. 2015: score(q, m_j) = v . tanh(W q + U m_j)."""

    def __init__(self, query_size: int, memory_size: int, size: int) -> None:
        super().__init__()
        self.query = nn.Linear(query_size, size, bias=False)
        self.key = nn.Linear(memory_size, size)
        self.v = nn.Linear(size, 1, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key(memory)  # once per source, not per decoder step

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """query (N, T, Q), keys (N, S, A) -> (N, T, S)."""
        return self.v(torch.tanh(keys.unsqueeze(1) + self.query(query).unsqueeze(2))).squeeze(-1)


class MultiplicativeAttention(nn.Module):
    """Luong et al. 2015, "general": score(q, m_j) = q . W m_j."""

    def __init__(self, query_size: int, memory_size: int) -> None:
        super().__init__()
        self.key = nn.Linear(memory_size, query_size, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key(memory)

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return query @ keys.transpose(1, 2)


def attend(attention: AdditiveAttention | MultiplicativeAttention, query: torch.Tensor, memory: "Memory"
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Context (N, T, memory size) and weights (N, T, S): a softmax over the source's real positions."""
    scores = attention.scores(query, memory.keys).masked_fill(~memory.mask.unsqueeze(1), float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ memory.outputs, weights


@dataclass
class Memory:
    """What the encoder hands the decoder for one batch of sources."""

    outputs: torch.Tensor  # (N, S, H)
    keys: torch.Tensor     # (N, S, A): the attention's projection of outputs (outputs itself without attention)
    mask: torch.Tensor     # (N, S) bool: True at real (non-PAD) source positions
    state: list[LayerState]

    def select(self, index: torch.Tensor) -> "Memory":
        return Memory(self.outputs[index], self.keys[index], self.mask[index], select_state(self.state, index))


class Seq2Seq(nn.Module):
    def __init__(self, vocab: int, embedding: int, hidden: int, cell: str, decoder_cell: str, layers: int,
                 bidirectional: bool, attention: str, residual: str, shared: bool, dropout: float,
                 norm: NormFactory) -> None:
        super().__init__()
        self.attention_kind, self.cell, self.decoder_cell = attention, cell, decoder_cell
        self.activation = "tanh"  # the cells' non-linearity; init reads it for the recurrent weights' gain
        self.teacher_forcing_ratio = 1.0
        self.source_embedding = nn.Embedding(vocab, embedding, padding_idx=PAD)
        self.encoder = RecurrentStack(cell, embedding, hidden, layers, residual, dropout, bidirectional)
        decoder_input = embedding + (hidden if attention == "additive" else 0)
        if shared:  # one module object on both sides: the same parameters, trained by both
            self.target_embedding, self.decoder = self.source_embedding, self.encoder
        else:
            self.target_embedding = nn.Embedding(vocab, embedding, padding_idx=PAD)
            self.decoder = RecurrentStack(decoder_cell, decoder_input, hidden, layers, residual, dropout, False)
        self.attention: AdditiveAttention | MultiplicativeAttention | None = None
        if attention == "additive":
            self.attention = AdditiveAttention(hidden, hidden, hidden)
        elif attention == "multiplicative":
            self.attention = MultiplicativeAttention(hidden, hidden)
            self.combine = nn.Linear(2 * hidden, hidden)  # Luong's attentional state tanh(W [c; h])
        features = 2 * hidden if attention == "additive" else hidden
        self.post = nn.Sequential(norm(features, 0), *dropout_layers(dropout))
        self.head = nn.Linear(features, vocab)

    # ---- the two calls decoding needs ------------------------------------------------------

    def encode(self, source: torch.Tensor) -> Memory:
        """source (N, S) token ids, PAD after each sequence."""
        mask = source != PAD
        outputs, state = self.encoder(self.source_embedding(source), lengths=mask.sum(1).clamp_min(1))
        keys = self.attention.keys(outputs) if self.attention is not None else outputs
        return Memory(outputs, keys, mask, convert_state(state, self.decoder_cell))

    def decode_step(self, token: torch.Tensor, state: list[LayerState], memory: Memory
                    ) -> tuple[torch.Tensor, list[LayerState]]:
        """The previous token (N,) and decoder state -> next-token logits (N, vocab) and the new state."""
        logits, state = self._decode(token.unsqueeze(1), state, memory)
        return logits[:, 0], state

    # ---- training and teacher-forced evaluation --------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        source, decoder_input = x[:, 0], x[:, 1]
        memory = self.encode(source)
        steps = int((decoder_input != PAD).sum(1).max())  # this batch's longest target (+ BOS); the rest is padding
        tokens = decoder_input[:, :steps]
        ratio = self.teacher_forcing_ratio if self.training else 1.0
        if ratio >= 1.0 and self.attention_kind != "additive":
            logits, _ = self._decode(tokens, memory.state, memory)  # every input known: one call over all steps
        else:
            logits = self._free_running(tokens, memory, ratio)
        # Positions past the batch's longest target hold no target (IGNORE_INDEX): zero logits, no gradient.
        return F.pad(logits, (0, 0, 0, x.shape[2] - steps)).transpose(1, 2)

    def _free_running(self, tokens: torch.Tensor, memory: Memory, ratio: float) -> torch.Tensor:
        """Step by step; each step's input is the true token with probability `ratio`, per sequence
        and step, else the previous step's prediction (Bengio et al. 2015)."""
        state, outputs, previous = memory.state, [], tokens[:, 0]
        with time_steps():  # the per-layer statistics: each decoder layer is one row, not one per step
            for t in range(tokens.shape[1]):
                if t > 0:
                    true = tokens[:, t]
                    if ratio >= 1.0:
                        previous = true
                    elif ratio > 0.0:
                        keep = torch.rand(true.shape, device=true.device) < ratio
                        previous = torch.where(keep, true, previous)
                    # ratio 0: every input is the model's own previous prediction
                step_logits, state = self.decode_step(previous, state, memory)
                outputs.append(step_logits)
                previous = step_logits.detach().argmax(-1)
        return torch.stack(outputs, dim=1)

    def _decode(self, tokens: torch.Tensor, state: list[LayerState], memory: Memory
                ) -> tuple[torch.Tensor, list[LayerState]]:
        """tokens (N, T) -> logits (N, T, vocab); T > 1 only without additive attention, whose
        query is the previous step's state."""
        embedded = self.target_embedding(tokens)
        if self.attention_kind == "additive":
            assert self.attention is not None
            query = state[-1][0] if isinstance(state[-1], tuple) else state[-1]  # top layer's h, (1, N, H)
            context, _ = attend(self.attention, query.transpose(0, 1), memory)
            out, state = self.decoder(torch.cat([embedded, context], dim=-1), state)
            features = torch.cat([out, context], dim=-1)
        elif self.attention_kind == "multiplicative":
            assert self.attention is not None
            out, state = self.decoder(embedded, state)
            context, _ = attend(self.attention, out, memory)
            features = torch.tanh(self.combine(torch.cat([context, out], dim=-1)))
        else:
            features, state = self.decoder(embedded, state)
        # The norm sees one row per (sequence, step): batch norm's statistics are per feature.
        normed = self.post(features.reshape(-1, features.shape[-1])).reshape(features.shape)
        return self.head(normed), state

    def extra_repr(self) -> str:
        return f"cell={self.cell}, decoder_cell={self.decoder_cell}, attention={self.attention_kind}"


def build(
    *,
    input_shape: tuple[int, ...],
    num_outputs: int,
    norm: NormFactory,
    dropout: float,
    input_dropout: float,
    activation: str,
    cell: str = "lstm",
    decoder_cell: str | None = None,
    embedding: int = 64,
    hidden: int = 128,
    layers: int = 1,
    bidirectional: bool = False,
    attention: str = "none",
    residual: str = "none",
    shared: bool = False,
) -> Seq2Seq:
    """Args:
        cell: lstm, gru or rnn (tanh), for the encoder, and for the decoder unless decoder_cell says otherwise.
        decoder_cell: the decoder's cell (null: the same as the encoder's).
        embedding: token embedding size.
        hidden: state size (a bidirectional encoder: half per direction).
        layers: stacked recurrent layers, on each side.
        bidirectional: read the source both ways.
        attention: none, additive (Bahdanau) or multiplicative (Luong).
        residual: between stacked layers: none, previous or dense.
        shared: one embedding and one recurrent stack for encoder and decoder.
    """
    if len(input_shape) != 2 or input_shape[0] != 2:
        raise ConfigError(f"model=seq2seq needs the token pairs of data=seq2seq (input shape (2, L)); "
                          f"this data set gives {tuple(input_shape)}")
    decoder_cell = cell if decoder_cell is None else decoder_cell
    for key, value in (("cell", cell), ("decoder_cell", decoder_cell)):
        if value not in CELLS:
            raise ConfigError(f"model.{key}={value!r} is unknown; valid: {', '.join(CELLS)}")
    if activation != "tanh":
        raise ConfigError(f"model.activation={activation!r}: the seq2seq cells compute tanh; valid: tanh")
    if attention not in ATTENTIONS:
        raise ConfigError(f"model.attention={attention!r} is unknown; valid: {', '.join(ATTENTIONS)}")
    if residual not in RESIDUALS:
        raise ConfigError(f"model.residual={residual!r} is unknown; valid: {', '.join(RESIDUALS)}")
    for key, value in (("embedding", embedding), ("hidden", hidden), ("layers", layers)):
        check_at_least(f"model.{key}", value, 1)
    check_probability("regularisation.dropout", dropout)
    if input_dropout:
        raise ConfigError(f"regularisation.input_dropout={input_dropout}: dropping token ids has no meaning; "
                          "use regularisation.dropout (between layers and before the head)")
    if residual == "previous" and layers < 2:
        raise ConfigError("model.residual=previous connects stacked layers: it needs model.layers >= 2")
    if residual == "dense" and layers < 3:  # at 2 layers the one input it adds is the one `previous` adds
        raise ConfigError(f"model.residual=dense differs from previous from 3 layers on: it needs model.layers >= 3 "
                          f"(got {layers})")
    if bidirectional and hidden % 2:
        raise ConfigError(f"model.hidden={hidden} must be even with model.bidirectional=true (half per direction)")
    if shared and (bidirectional or attention == "additive" or decoder_cell != cell):
        why = ("a bidirectional encoder" if bidirectional else "a different decoder_cell" if decoder_cell != cell
               else "additive attention (the decoder also reads the context)")
        raise ConfigError(f"model.shared=true needs the encoder and decoder to have the same shape; {why} "
                          "makes them differ: use model.shared=false")
    return Seq2Seq(num_outputs, embedding, hidden, cell, decoder_cell, layers, bidirectional, attention, residual, shared,
                   dropout, norm)
