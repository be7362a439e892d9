"""Sequence-to-sequence: the generated tasks, the encoder-decoder's switches, decoding (greedy and
beam search against exhaustive search), the two accuracies, and teacher forcing / scheduled sampling."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from in_process import train_in_process
from trainer.data import seq2seq as tasks
from trainer.data.seq2seq import BOS, EOS, FIRST_SYMBOL, IGNORE_INDEX, PAD
from trainer.engine.loop import Trainer
from trainer.engine.parts import build_parts
from trainer.errors import ConfigError
from trainer.models import decoding
from trainer.models import seq2seq as models
from trainer.observe.display import PlainDisplay
from trainer.observe.history import read_metrics
from trainer.run import run
from trainer.tricks import teacher_forcing
from trainer.tricks.norm import factory


def symbols_of(tokens: torch.Tensor) -> list[int]:
    """Token ids -> symbols, structure tokens and padding dropped."""
    return [t - FIRST_SYMBOL for t in tokens.tolist() if t >= FIRST_SYMBOL]


def model(data: tasks.DataSplits, **switches: object) -> models.Seq2Seq:
    options = {"hidden": 16, "embedding": 8, **switches}
    return models.build(input_shape=data.input_shape, num_outputs=data.num_outputs, norm=factory("none"),
                        dropout=0.0, input_dropout=0.0, activation="tanh", **options)


@pytest.fixture(scope="module")
def reverse_data() -> tasks.DataSplits:
    return tasks.build(task="reverse", min_len=2, max_len=5, num_train=64, num_val=16, num_test=16)


# ---- data ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", tasks.TASKS)
def test_targets_follow_the_task_and_the_layout(task: str) -> None:
    data = tasks.build(task=task, min_len=1, max_len=4, num_train=50, num_val=10, num_test=10)
    for x, y in zip(data.x_train, data.y_train):
        source, decoder_input = x[0], x[1]
        target = symbols_of(y)
        if task == "copy":
            assert target == symbols_of(source)
        elif task == "reverse":
            assert target == symbols_of(source)[::-1]
        elif task == "sort":
            assert target == sorted(symbols_of(source))
        else:
            plus = source.tolist().index(tasks.plus_token(10))
            a, b = (int("".join(map(str, symbols_of(part)))) for part in (source[:plus], source[plus + 1:]))
            assert int("".join(map(str, target))) == a + b
        length = len(target)
        assert y[length] == EOS and (y[length + 1:] == IGNORE_INDEX).all()
        assert decoder_input[0] == BOS and decoder_input[1:length + 1].tolist() == y[:length].tolist()
        assert (decoder_input[length + 1:] == PAD).all()


def test_splits_are_disjoint_seeded_and_the_test_split_is_drawn_last() -> None:
    data = tasks.build(task="sort", num_train=300, num_val=100, num_test=100, seed=3)
    sources = [{tuple(x[0].tolist()) for x in split} for split in (data.x_train, data.x_val, data.x_test)]
    assert sum(map(len, sources)) == 500 and len(set.union(*sources)) == 500
    again = tasks.build(task="sort", num_train=300, num_val=100, num_test=0, seed=3)
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.x_val, data.x_val) and again.x_test is None
    other = tasks.build(task="sort", num_train=300, num_val=100, num_test=100, seed=4)
    assert not torch.equal(other.x_train, data.x_train)


def test_lengths_follow_the_settings() -> None:
    data = tasks.build(task="reverse", min_len=4, max_len=6, num_train=200, num_val=10, num_test=0)
    lengths = (data.x_train[:, 0] != PAD).sum(1)
    assert int(lengths.min()) == 4 and int(lengths.max()) == 6


def test_reverse_input_reverses_the_source_only() -> None:
    plain = tasks.build(task="sort", num_train=40, num_val=10, num_test=10)
    reversed_ = tasks.build(task="sort", num_train=40, num_val=10, num_test=10, reverse_input=True)
    assert torch.equal(plain.y_train, reversed_.y_train) and torch.equal(plain.x_train[:, 1], reversed_.x_train[:, 1])
    for a, b in zip(plain.x_train[:, 0], reversed_.x_train[:, 0]):
        assert symbols_of(b) == symbols_of(a)[::-1]
        assert (b != PAD).sum() == (a != PAD).sum() and b[0] != PAD  # still padded at the end


@pytest.mark.parametrize("setting, message", [
    ({"task": "echo"}, "data.task='echo' is unknown; valid: copy, reverse, sort, add"),
    ({"min_len": 0}, "data.min_len=0 must be at least 1"),
    ({"min_len": 5, "max_len": 4}, "data.max_len=4 must be at least data.min_len=5"),
    ({"symbols": 2, "min_len": 1, "max_len": 2, "num_train": 100}, "6 distinct sources"),
])
def test_bad_data_settings_are_one_line_errors(setting: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tasks.build(**setting)


# ---- the model ----------------------------------------------------------------------------------

def test_shared_weights_are_the_same_tensors_and_separate_ones_are_not(reverse_data: tasks.DataSplits) -> None:
    shared = model(reverse_data, shared=True, layers=2)
    assert shared.decoder is shared.encoder and shared.target_embedding is shared.source_embedding
    for (name, a), (_, b) in zip(shared.encoder.named_parameters(), shared.decoder.named_parameters()):
        assert a is b, name
    separate = model(reverse_data, shared=False, layers=2)
    pointers = {p.data_ptr() for p in separate.encoder.parameters()}
    assert not pointers & {p.data_ptr() for p in separate.decoder.parameters()}
    # One set of recurrent weights fewer, and training moves the shared ones from both sides.
    assert sum(p.numel() for p in shared.parameters()) < sum(p.numel() for p in separate.parameters())


@pytest.mark.parametrize("kind", ["additive", "multiplicative"])
def test_attention_weights_sum_to_one_over_the_real_source_positions(kind: str, reverse_data: tasks.DataSplits) -> None:
    net = model(reverse_data, attention=kind)
    memory = net.encode(reverse_data.x_val[:, 0])
    assert net.attention is not None
    query = torch.randn(len(memory.mask), 3, 16)
    _, weights = models.attend(net.attention, query, memory)
    assert torch.allclose(weights.sum(-1), torch.ones(len(memory.mask), 3))
    assert (weights.masked_select(~memory.mask.unsqueeze(1).expand_as(weights)) == 0).all()
    assert (weights.masked_select(memory.mask.unsqueeze(1).expand_as(weights)) > 0).all()


@pytest.mark.parametrize("switches", [
    {"attention": "none"}, {"attention": "multiplicative", "cell": "gru"},
    {"layers": 3, "residual": "previous", "bidirectional": True}, {"layers": 3, "residual": "dense", "cell": "rnn"},
    {"cell": "gru", "decoder_cell": "lstm", "layers": 2},
])
def test_the_whole_sequence_path_equals_decoding_step_by_step(switches: dict, reverse_data: tasks.DataSplits) -> None:
    """Teacher-forced logits come from one call over every step when no input is sampled; they
    must equal feeding the same true tokens one step at a time (the path decoding uses)."""
    net = model(reverse_data, **switches).eval()
    x = reverse_data.x_val
    logits = net(x)
    memory = net.encode(x[:, 0])
    state, steps = memory.state, int((x[:, 1] != PAD).sum(1).max())
    for t in range(steps):
        step_logits, state = net.decode_step(x[:, 1, t], state, memory)
        assert torch.allclose(step_logits, logits[:, :, t], atol=1e-5)
    assert (logits[:, :, steps:] == 0).all()


@pytest.mark.parametrize("cell, decoder_cell", [("lstm", "gru"), ("gru", "lstm"), ("lstm", "rnn")])
def test_the_decoder_cell_can_differ_and_starts_from_the_encoder_s_final_h(cell: str, decoder_cell: str,
                                                                           reverse_data: tasks.DataSplits) -> None:
    net = model(reverse_data, cell=cell, decoder_cell=decoder_cell, layers=2)
    assert all(isinstance(layer, models.CELLS[cell]) for layer in net.encoder.layers)
    assert all(isinstance(layer, models.CELLS[decoder_cell]) for layer in net.decoder.layers)
    source = reverse_data.x_val[:, 0]
    _, encoder_state = net.encoder(net.source_embedding(source), lengths=(source != PAD).sum(1))
    start = net.encode(source).state
    for encoded, started in zip(encoder_state, start):
        h = encoded[0] if isinstance(encoded, tuple) else encoded
        assert torch.equal(started[0] if decoder_cell == "lstm" else started, h)
        if decoder_cell == "lstm" and cell != "lstm":
            assert (started[1] == 0).all()  # a fresh memory cell
    assert net(reverse_data.x_val).shape == (16, reverse_data.num_outputs, reverse_data.x_val.shape[2])


@pytest.mark.parametrize("residual", ["none", "previous", "dense"])
def test_residual_connections_feed_each_layer_as_defined(residual: str, reverse_data: tasks.DataSplits) -> None:
    """x_2 = h_1(e); previous: x_(l+1) = h_l(x_l) + x_l; dense: x_(l+1) = h_l(x_l) + x_2 + ... + x_l
    (Britz et al. 2017's Res and ResD). At 4 layers the three differ."""
    torch.manual_seed(0)
    net = model(reverse_data, layers=4, residual=residual)
    layers = net.encoder.layers
    embedded = net.source_embedding(reverse_data.x_val[:, 0])
    x = [None, None, layers[0](embedded)[0]]  # x[l]: the input of layer l (1-based); x_2 = h_1(e)
    for l in (2, 3, 4):
        out = layers[l - 1](x[l])[0]
        x.append(out if residual == "none" else out + x[l] if residual == "previous" else out + sum(x[2:l + 1]))
    got, _ = net.encoder(embedded)
    assert torch.allclose(got, x[5], atol=1e-5)
    others = {"none", "previous", "dense"} - {residual}
    for other in others:
        net.encoder.residual = other
        assert not torch.allclose(net.encoder(embedded)[0], got, atol=1e-3), other


@pytest.mark.parametrize("setting, message", [
    ({"cell": "lstmx"}, "model.cell='lstmx' is unknown; valid: lstm, gru, rnn"),
    ({"attention": "dot"}, "model.attention='dot' is unknown; valid: none, additive, multiplicative"),
    ({"residual": "previous"}, "model.residual=previous connects stacked layers: it needs model.layers >= 2"),
    ({"residual": "dense", "layers": 2}, r"model.residual=dense differs from previous from 3 layers on: it needs model.layers >= 3 \(got 2\)"),
    ({"shared": True, "bidirectional": True}, "model.shared=true needs the encoder and decoder to have the same shape"),
    ({"shared": True, "attention": "additive"}, "model.shared=true needs the encoder and decoder"),
    ({"shared": True, "decoder_cell": "gru"}, "a different decoder_cell makes them differ"),
    ({"decoder_cell": "lstmx"}, "model.decoder_cell='lstmx' is unknown"),
    ({"bidirectional": True, "hidden": 15}, "model.hidden=15 must be even"),
])
def test_bad_model_settings_are_one_line_errors(setting: dict, message: str, reverse_data: tasks.DataSplits) -> None:
    with pytest.raises(ConfigError, match=message):
        model(reverse_data, **setting)


def test_the_model_refuses_data_that_is_not_token_pairs() -> None:
    with pytest.raises(ConfigError, match="model=seq2seq needs the token pairs of data=seq2seq"):
        models.build(input_shape=(1, 40), num_outputs=10, norm=factory("none"), dropout=0.0, input_dropout=0.0,
                     activation="tanh")


# ---- teacher forcing ----------------------------------------------------------------------------

def test_teacher_forcing_ratio_decides_what_the_decoder_reads(reverse_data: tasks.DataSplits) -> None:
    """Ratio 1: the decoder reads the true tokens, so changing them changes the logits. Ratio 0: it
    reads its own predictions, so only the first input (BOS) matters."""
    net = model(reverse_data, attention="additive").train()
    x = reverse_data.x_val.clone()
    scrambled = x.clone()
    real = scrambled[:, 1, 1:] != PAD
    scrambled[:, 1, 1:][real] = FIRST_SYMBOL + (scrambled[:, 1, 1:][real] - FIRST_SYMBOL + 1) % 10
    net.teacher_forcing_ratio = 1.0
    assert not torch.allclose(net(x), net(scrambled))
    net.teacher_forcing_ratio = 0.0
    assert torch.equal(net(x), net(scrambled))


def test_scheduled_sampling_feeds_the_true_token_at_the_ratio(reverse_data: tasks.DataSplits) -> None:
    """At ratio 0.3 about 30% of the inputs after BOS are the true ones: count them through the embedding."""
    net = model(reverse_data).train()
    net.teacher_forcing_ratio = 0.3
    fed: list[torch.Tensor] = []
    net.target_embedding.register_forward_hook(lambda module, args, out: fed.append(args[0].clone()))
    x = reverse_data.x_train.repeat(8, 1, 1)
    # A constant wrong prediction (head bias towards PAD is masked nowhere in training): use symbol 9.
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.fill_(0).index_fill_(0, torch.tensor([FIRST_SYMBOL + 9]), 10.0)
    net(x)
    inputs = torch.cat(fed[1:], dim=1)  # steps after the first, whose input is always BOS
    true = x[:, 1, 1:inputs.shape[1] + 1]
    counted = (true != PAD) & (true != FIRST_SYMBOL + 9)
    fraction = float((inputs == true)[counted].float().mean())
    assert abs(fraction - 0.3) < 0.03, fraction


def test_decays_follow_bengio_et_al() -> None:
    assert teacher_forcing.linear_ratio(0, 1.0, 0.01, 0.1) == 1.0
    assert teacher_forcing.linear_ratio(50, 1.0, 0.01, 0.1) == pytest.approx(0.5)
    assert teacher_forcing.linear_ratio(10_000, 1.0, 0.01, 0.1) == 0.1
    assert teacher_forcing.exponential_ratio(0, 0.99) == 1.0
    assert teacher_forcing.exponential_ratio(100, 0.99) == pytest.approx(math.exp(100 * math.log(0.99)))
    assert teacher_forcing.inverse_sigmoid_ratio(0, 100.0) == pytest.approx(100 / 101)
    assert teacher_forcing.inverse_sigmoid_ratio(100 * math.log(100), 100.0) == pytest.approx(0.5)
    assert teacher_forcing.inverse_sigmoid_ratio(10**9, 100.0) == 0.0
    for decay in (lambda s: teacher_forcing.exponential_ratio(s, 0.99),
                  lambda s: teacher_forcing.inverse_sigmoid_ratio(s, 50.0)):
        ratios = [decay(step) for step in range(0, 2000, 50)]
        assert ratios == sorted(ratios, reverse=True) and ratios[-1] < 1e-3


def test_the_schedule_sets_the_model_each_step_and_resumes_from_its_state(reverse_data: tasks.DataSplits) -> None:
    net = model(reverse_data)
    schedule = teacher_forcing.linear(net, k=1.0, c=0.25, floor=0.0)
    assert net.teacher_forcing_ratio == 1.0
    for _ in range(3):
        schedule.step_end()
    assert net.teacher_forcing_ratio == 0.25
    other = model(reverse_data)
    resumed = teacher_forcing.linear(other, k=1.0, c=0.25, floor=0.0)
    resumed.load_state_dict(schedule.state_dict())
    assert other.teacher_forcing_ratio == 0.25 and resumed.step == 3


@pytest.mark.parametrize("build, message", [
    (lambda m: teacher_forcing.constant(m, ratio=1.5), r"teacher_forcing.ratio=1.5 must be in \[0, 1\]"),
    (lambda m: teacher_forcing.constant(m, ratio=-0.1), r"teacher_forcing.ratio=-0.1 must be in \[0, 1\]"),
    (lambda m: teacher_forcing.exponential(m, k=1.5), r"teacher_forcing.k=1.5 must be in \(0, 1\]"),
    (lambda m: teacher_forcing.inverse_sigmoid(m, k=0.5), "teacher_forcing.k=0.5 must be >= 1"),
    (lambda m: teacher_forcing.linear(torch.nn.Linear(2, 2)), "teacher_forcing=linear needs a decoder"),
])
def test_bad_teacher_forcing_settings_are_one_line_errors(build, message: str, reverse_data: tasks.DataSplits) -> None:
    with pytest.raises(ConfigError, match=message):
        build(model(reverse_data))


# ---- decoding -----------------------------------------------------------------------------------

@torch.no_grad()
def exhaustive(net: models.Seq2Seq, source: torch.Tensor, max_len: int, alpha: float) -> list[int]:
    """The best output of one source by log P / lp(length), trying every sequence: EOS ends one,
    max_len tokens end one; PAD and BOS are never produced."""
    produced = [t for t in range(net.head.out_features) if t not in decoding.NEVER_PRODUCED]
    best, best_score = None, -math.inf
    memory = net.encode(source.unsqueeze(0))
    for length in range(1, max_len + 1):
        for tokens in itertools.product(produced, repeat=length):
            if EOS in tokens[:-1] or (length < max_len and tokens[-1] != EOS):
                continue
            state, previous, log_p = memory.state, torch.tensor([BOS]), 0.0
            for token in tokens:
                logits, state = net.decode_step(previous, state, memory)
                log_p += float(decoding._log_probs(logits)[0, token])
                previous = torch.tensor([token])
            score = log_p / decoding.length_penalty(length, alpha)
            if score > best_score:
                best, best_score = list(tokens), score
    assert best is not None
    return best + [PAD] * (max_len - len(best))


@pytest.mark.parametrize("alpha", [0.0, 1.0, 3.0])
def test_a_full_width_beam_finds_what_exhaustive_search_finds(alpha: float) -> None:
    data = tasks.build(task="reverse", symbols=2, min_len=1, max_len=3, num_train=1, num_val=6, num_test=0)
    torch.manual_seed(1)
    net = model(data, attention="multiplicative").eval()
    with torch.no_grad():  # sharpen the random model so that greedy choices can be wrong
        net.head.weight.mul_(20)
    max_len = 4  # 3 producible tokens: up to 27 live hypotheses, a beam of 64 keeps them all
    sources = data.x_val[:, 0]
    found = decoding.beam_search(net, sources, max_len, beam_size=64, alpha=alpha)
    expected = [exhaustive(net, source, max_len, alpha) for source in sources]
    assert found.tolist() == expected
    if alpha == 0.0:  # the search matters: greedy decoding misses the best output somewhere
        assert decoding.greedy(net, sources, max_len).tolist() != expected


@pytest.mark.parametrize("attention", ["none", "additive"])
def test_a_beam_of_one_is_greedy_decoding(attention: str, reverse_data: tasks.DataSplits) -> None:
    torch.manual_seed(0)
    net = model(reverse_data, attention=attention, cell="gru").eval()
    sources = reverse_data.x_val[:, 0]
    greedy = decoding.greedy(net, sources, 7)
    assert torch.equal(decoding.beam_search(net, sources, 7, beam_size=1, alpha=0.8), greedy)
    assert torch.equal(decoding.Decoding("beam", 1, 0.8)(net, sources, 7), greedy)
    assert ((greedy == EOS).sum(1) <= 1).all()  # nothing after EOS but padding


def test_length_penalty_is_gnmt_s() -> None:
    assert decoding.length_penalty(1, 0.7) == 1.0
    assert decoding.length_penalty(7, 1.0) == 2.0
    assert decoding.length_penalty(7, 0.0) == 1.0


@pytest.mark.parametrize("setting, message", [
    ({"beam_size": 0}, "decoding.beam_size=0 must be >= 1"),
    ({"length_penalty": -1.0}, "decoding.length_penalty=-1.0 must be >= 0"),
])
def test_bad_decoding_settings_are_one_line_errors(setting: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        decoding.beam(**setting)


def test_token_and_sequence_accuracy_on_hand_examples() -> None:
    I = IGNORE_INDEX  # noqa: E741
    target = torch.tensor([[5, 6, 7, EOS], [5, 6, EOS, I], [5, EOS, I, I]])
    predicted = torch.tensor([
        [5, 6, 7, EOS],      # exact
        [5, 6, 7, EOS],      # one token too long: EOS comes a step late
        [6, EOS, PAD, PAD],  # wrong first token, right length
    ])
    assert decoding.token_accuracy(predicted, target) == (4 + 2 + 1, 4 + 3 + 2)
    assert decoding.sequence_accuracy(predicted, target) == (1, 3)
    short = torch.tensor([[5, EOS, PAD, PAD]])  # stopped early
    assert decoding.sequence_accuracy(short, target[:1]) == (0, 1)
    assert decoding.token_accuracy(short, target[:1]) == (1, 4)


def test_the_loss_skips_padding() -> None:
    """The shared convention: logits (N, vocab, T), targets (N, T) with IGNORE_INDEX after EOS."""
    logits = torch.randn(2, 6, 4)
    target = torch.tensor([[3, 4, EOS, IGNORE_INDEX], [3, EOS, IGNORE_INDEX, IGNORE_INDEX]])
    by_hand = torch.stack([F.cross_entropy(logits[i, :, t], target[i, t]) for i, t in
                           [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]]).mean()
    assert torch.allclose(F.cross_entropy(logits, target), by_hand)


# ---- through the loop: metrics, early stopping, resume, the command line ---------------------------

SEQ2SEQ = ["data=seq2seq", "model=seq2seq", "norm=none", "data.num_train=64", "data.num_val=24", "data.num_test=24",
           "data.max_len=5", "model.hidden=16", "model.embedding=8", "batch_size=16"]


def test_a_run_records_decoded_accuracies_in_metrics_summary_and_test(make_cfg, tmp_path) -> None:

    summary = run(make_cfg(*SEQ2SEQ, "max_steps=8", "epochs=2", "decoding=beam", "decoding.beam_size=2"), tmp_path / "run")
    assert summary["tricks"]["decoding"] == "beam" and summary["tricks"]["teacher_forcing"] == "constant"
    epochs = read_metrics(tmp_path / "run" / "metrics.jsonl")["epoch"]
    for row in epochs:
        assert 0 <= row["val_seq_acc"] <= row["val_token_acc"] <= 1
    assert summary["final"]["val_seq_acc"] == epochs[-1]["val_seq_acc"]
    assert set(summary["test"]) == {"loss", "acc", "token_acc", "seq_acc"}
    start = read_metrics(tmp_path / "run" / "metrics.jsonl")["start"][0]
    assert start["input_mean"] is None  # token ids are not features to standardise


def test_the_loop_s_accuracy_counts_tokens_not_padding(make_cfg) -> None:
    """measure() on sequence targets: per-token loss and teacher-forced accuracy over real tokens only."""

    parts = build_parts(make_cfg(*SEQ2SEQ))
    trainer = Trainer(parts, PlainDisplay(Console()), [], torch.Generator())
    x, y = parts.data.x_val, parts.data.y_val
    loss, acc = trainer.measure(x, y)
    parts.model.eval()
    with torch.no_grad():
        out = parts.model(x)
    real = y != IGNORE_INDEX
    assert loss == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-5)
    assert acc == pytest.approx(float((out.argmax(1) == y)[real].float().mean()))
    decoded = trainer.decoded(x, y)
    predicted = decoding.greedy(parts.model, x[:, 0], y.shape[1])
    assert decoded["seq_acc"] == decoding.sequence_accuracy(predicted, y)[0] / len(y)


def test_early_stopping_on_sequence_accuracy_keeps_the_highest(make_cfg, tmp_path) -> None:

    summary = run(make_cfg(*SEQ2SEQ, "epochs=6", "max_steps=null", "early_stopping=val_seq_acc",
                           "early_stopping.patience=2", "optim.lr=0.02"), tmp_path / "run")
    epochs = read_metrics(tmp_path / "run" / "metrics.jsonl")["epoch"]
    best = max(row["val_seq_acc"] for row in epochs)
    assert summary["restored"]["val_seq_acc"] == best  # the highest, not the lowest


def test_the_teacher_forcing_step_travels_in_the_checkpoint(make_cfg) -> None:

    cfg = make_cfg(*SEQ2SEQ, "teacher_forcing=linear", "teacher_forcing.c=0.1")
    parts = build_parts(cfg)
    trainer = Trainer(parts, PlainDisplay(Console()), [], torch.Generator().manual_seed(0))
    trainer.fit()
    assert parts.teacher_forcing.step == 3 and parts.model.teacher_forcing_ratio == pytest.approx(0.7)
    payload = trainer.state_dict()
    fresh = build_parts(cfg)
    Trainer(fresh, PlainDisplay(Console()), [], torch.Generator()).load_state_dict(payload)
    assert fresh.teacher_forcing.step == 3 and fresh.model.teacher_forcing_ratio == pytest.approx(0.7)


# On the seq2seq task, then on the default data and model, which do not decode.
@pytest.mark.parametrize("base, overrides, message", [
    (SEQ2SEQ, ["model.cell=lstmx"], "model.cell='lstmx' is unknown; valid: lstm, gru, rnn"),
    (SEQ2SEQ, ["decoding=beam", "decoding.beam_size=0"], "decoding.beam_size=0 must be >= 1"),
    (SEQ2SEQ, ["teacher_forcing.ratio=1.5"], "teacher_forcing.ratio=1.5 must be in [0, 1]"),
    (SEQ2SEQ, ["teacher_forcing=inverse_sigmoid", "teacher_forcing.k=0"], "teacher_forcing.k=0 must be >= 1"),
    ([], ["data=seq2seq"], "data=seq2seq gives token sequences for an encoder-decoder; use model=seq2seq"),
    ([], ["decoding=beam"], "decoding=beam decodes sequences: it needs model=seq2seq"),
    ([], ["teacher_forcing=linear"], "teacher_forcing=linear needs a decoder"),
    ([], ["early_stopping=val_seq_acc"], "early_stopping.monitor=val_seq_acc is measured by decoding sequences"),
])
def test_bad_values_are_one_line_and_exit_2(base: list[str], overrides: list[str], message: str, tmp_path) -> None:
    outcome = train_in_process([*base, *overrides, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert outcome.code == 2, outcome.stderr
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in outcome.stderr
    assert not (tmp_path / "run").exists()
