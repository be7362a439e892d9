"""The character language model: data=text (vocabulary, contiguous split, bad files), model=char_lstm
(the logits' shape contract, the RNN tricks applied to it), sampling, bits per character, and the
transfer probe's data and classifier."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainer.data import text, text_probe
from trainer.errors import ConfigError, DataError
from trainer.models import char_lm, char_probe
from trainer.tricks.init import initialise
from trainer.tricks.norm import factory

TEXT = "The quick brown fox (jumps) over \"the lazy\" dog.\n" * 40  # 2000 characters, 30 distinct


def write(tmp_path: Path, content: str | bytes) -> str:
    path = tmp_path / "corpus.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def tiny_lm(vocab: int, hidden: int = 12, layers: int = 2, dropout: float = 0.0, norm: str = "none") -> char_lm.CharLSTM:
    return char_lm.build(input_shape=(16,), num_outputs=vocab, vocab_size=vocab, norm=factory(norm), dropout=dropout,
                         input_dropout=0.0, embedding=8, hidden=hidden, layers=layers)


def test_vocabulary_round_trip_of_a_user_file(tmp_path: Path) -> None:
    unicode_text = "naïve café — ∑ λ 🙂\n" * 20
    data = text.build(path=write(tmp_path, unicode_text), seq_len=8)
    assert data.chars == "".join(sorted(set(unicode_text)))
    assert text.decode(text.encode(unicode_text, data.chars), data.chars) == unicode_text
    assert data.num_outputs == len(data.chars) and data.x_train.dtype == torch.int64


def test_targets_are_the_inputs_shifted_by_one() -> None:
    ids = torch.arange(50)
    x, y = text.windows(ids, 8)
    assert x.shape == y.shape == (6, 8)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x.flatten(), ids[:48])  # consecutive windows: every character is a target once


def test_split_blocks_are_contiguous_and_never_overlap(tmp_path: Path) -> None:
    # Every character of this text is distinct (its own position), so a shared id means a shared character.
    distinct = "".join(chr(0x4E00 + i) for i in range(1000))
    data = text.build(path=write(tmp_path, distinct), seq_len=10, val_fraction=0.1, test_fraction=0.1)
    assert data.x_test is not None and data.y_test is not None
    seen = {name: set(torch.cat([x.flatten(), y.flatten()]).tolist())
            for name, x, y in (("train", data.x_train, data.y_train), ("val", data.x_val, data.y_val),
                               ("test", data.x_test, data.y_test))}
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"] and not seen["val"] & seen["test"]
    assert max(seen["train"]) < min(seen["val"]) and max(seen["val"]) < min(seen["test"])  # train, then val, then test
    assert len(seen["train"]) > 7 * len(seen["val"])


def test_the_default_text_is_pythons_help_topics() -> None:
    from pydoc_data.topics import topics

    default = text.default_text()
    assert topics["assert"].strip() in default and len(default) > 100_000
    data = text.build(seq_len=64, max_chars=20_000)
    assert data.x_train.shape[1] == 64 and len(data.x_train) == (18_000 - 1) // 64


@pytest.mark.parametrize("content, message", [
    (None, "is not a file"),
    ("", "is empty"),
    (b"caf\xe9 latin-1", "is not UTF-8"),
])
def test_bad_text_files_are_one_line_errors(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    path = str(tmp_path / "missing.txt") if content is None else write(tmp_path, content)
    with pytest.raises(DataError, match=message) as error:
        text.build(path=path)
    assert "\n" not in str(error.value) and path in str(error.value)


def test_a_text_too_short_for_one_sequence_is_refused_saying_how_long_it_must_be(tmp_path: Path) -> None:
    import re

    with pytest.raises(DataError, match="too few for one sequence") as error:
        text.build(path=write(tmp_path, "short text"), seq_len=64)
    need = int(re.search(r"at least (\d+) characters", str(error.value)).group(1))  # type: ignore[union-attr]
    data = text.build(path=write(tmp_path, "x" * need), seq_len=64)  # the length it names is enough
    assert len(data.x_val) == len(data.x_test) == 1


def test_logits_put_the_vocabulary_on_dim_1_for_cross_entropy() -> None:
    model = tiny_lm(vocab=30, norm="layernorm")
    ids = torch.randint(30, (5, 16))
    logits = model(ids)
    assert logits.shape == (5, 30, 16)
    per_step, _ = model.step_logits(ids)
    assert torch.equal(logits, per_step.transpose(1, 2))
    targets = torch.randint(30, (5, 16))
    assert torch.allclose(F.cross_entropy(logits, targets),
                          F.cross_entropy(per_step.reshape(-1, 30), targets.reshape(-1)))


def test_position_t_sees_only_the_characters_up_to_t() -> None:
    model = tiny_lm(vocab=30, norm="batchnorm").eval()
    ids = torch.randint(30, (2, 16))
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 30
    assert torch.equal(model(ids)[:, :, :10], model(changed)[:, :, :10])
    assert not torch.equal(model(ids)[:, :, 10:], model(changed)[:, :, 10:])


def test_init_sets_forget_bias_one_and_orthogonal_recurrent_weights() -> None:
    model = initialise(tiny_lm(vocab=30, hidden=12, layers=2), "xavier")
    hidden = 12
    for layer in range(2):
        bias_ih, bias_hh = getattr(model.rnn, f"bias_ih_l{layer}"), getattr(model.rnn, f"bias_hh_l{layer}")
        total = bias_ih + bias_hh  # the gate's bias is their sum; gates in order input, forget, cell, output
        assert torch.all(total[hidden : 2 * hidden] == 1.0)
        assert torch.all(total[:hidden] == 0) and torch.all(total[2 * hidden :] == 0)
        for block in getattr(model.rnn, f"weight_hh_l{layer}").detach().chunk(4):
            assert torch.allclose(block @ block.T, torch.eye(hidden), atol=1e-5)
    default = tiny_lm(vocab=30)  # PyTorch's own init (init=default) has neither
    assert not torch.all(default.rnn.bias_ih_l0[hidden : 2 * hidden] + default.rnn.bias_hh_l0[hidden : 2 * hidden] == 1)


def test_dropout_is_only_on_non_recurrent_connections() -> None:
    model = char_lm.build(input_shape=(16,), num_outputs=30, vocab_size=30, norm=factory("none"), dropout=0.3,
                          input_dropout=0.1, embedding=8, hidden=12, layers=2)
    assert model.rnn.dropout == 0.3  # between the stacked layers: nn.LSTM never drops the recurrent path
    dropouts = [module.p for module in model.modules() if isinstance(module, torch.nn.Dropout)]
    assert dropouts == [0.1, 0.3]  # the embeddings, and the last layer's output before the head
    single = char_lm.build(input_shape=(16,), num_outputs=30, vocab_size=30, norm=factory("none"), dropout=0.3,
                           input_dropout=0.0, embedding=8, hidden=12, layers=1)
    assert single.rnn.dropout == 0.0


def test_the_char_model_refuses_data_that_is_not_characters() -> None:
    with pytest.raises(ConfigError, match="use data=text"):
        char_lm.build(input_shape=(1, 40), num_outputs=10, vocab_size=10, norm=factory("none"), dropout=0.0,
                      input_dropout=0.0)
    with pytest.raises(ConfigError, match="use data=text"):
        char_lm.build(input_shape=(40,), num_outputs=10, norm=factory("none"), dropout=0.0, input_dropout=0.0)


def test_bits_per_character_is_the_loss_in_nats_over_ln_2() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(4, 30, 16), torch.randint(30, (4, 16))
    nats = float(F.cross_entropy(logits, targets))
    probability = F.softmax(logits, dim=1).gather(1, targets.unsqueeze(1))
    bits = float(-torch.log2(probability).mean())  # the definition: mean -log2 p(next character)
    assert text.bits_per_char(nats) == pytest.approx(bits, rel=1e-6)
    assert text.bits_per_char(math.log(30)) == pytest.approx(math.log2(30))  # uniform guessing: log2 |vocab|


def test_sampling_is_seeded_and_emits_only_vocabulary_characters() -> None:
    chars = "".join(sorted(set(TEXT)))
    model = tiny_lm(vocab=len(chars))
    first = char_lm.sample(model, chars, length=200, temperature=1.0, prime="The ", seed=3)
    assert first == char_lm.sample(model, chars, length=200, temperature=1.0, prime="The ", seed=3)
    assert first != char_lm.sample(model, chars, length=200, temperature=1.0, prime="The ", seed=4)
    assert first.startswith("The ") and len(first) == 204 and set(first) <= set(chars)
    unprimed = char_lm.sample(model, chars, length=50, seed=0)
    assert len(unprimed) == 51 and set(unprimed) <= set(chars)
    greedy = char_lm.sample(model, chars, length=30, temperature=0, prime="T", seed=0)
    assert greedy == char_lm.sample(model, chars, length=30, temperature=0, prime="T", seed=99)  # no draws at all
    with pytest.raises(ConfigError, match="not in the run's vocabulary"):
        char_lm.sample(model, chars, length=5, prime="Z!")


def test_a_low_temperature_concentrates_the_draws() -> None:
    chars = "abcdefghij"
    model = tiny_lm(vocab=len(chars))
    with torch.no_grad():
        model.head.bias.copy_(torch.arange(10.0) * 0.5)  # 'j' most likely, by a margin that a low temperature sharpens
    cold = char_lm.sample(model, chars, length=300, temperature=0.1, seed=0)
    hot = char_lm.sample(model, chars, length=300, temperature=3.0, seed=0)
    assert cold[1:].count("j") > 250 and len(set(hot[1:])) == 10


def test_probe_labels_follow_their_rule() -> None:
    assert text_probe.RULES["quote"]('say "hi') and not text_probe.RULES["quote"]('say "hi" now')
    assert text_probe.RULES["paren"]("f(a, [b") and not text_probe.RULES["paren"]("f(a) ) [b]")


def test_probe_snippets_are_balanced_labelled_and_from_separate_parts(tmp_path: Path) -> None:
    corpus = "".join(f'x{i} = f("a{i}", [b, c]) and "q" ({i}\n' for i in range(3000))
    data = text_probe.build(path=write(tmp_path, corpus), label="quote", snippet_len=20, num_train=40,
                            num_val=30, num_test=30)
    assert data.x_train.shape == (40, 20) and data.y_train.float().mean() == 0.5 and data.chars is not None
    for x, y in ((data.x_train, data.y_train), (data.x_val, data.y_val)):
        for ids, label in zip(x, y):
            assert text_probe.RULES["quote"](text.decode(ids, data.chars)) == bool(label)
    held_out, _ = text_probe.held_out_text(None, write(tmp_path, corpus))
    assert len(held_out) == round(len(corpus) * 0.1)  # only the text after a default LM's training block


@pytest.mark.parametrize("tail", [0, 1, 65, -5])
def test_a_shuffle_tail_that_cannot_be_permuted_as_asked_is_refused(tmp_path: Path, tail: int) -> None:
    # 0 shuffled the whole snippet (snippet[-0:]), 1 never differs and ended in "use a longer text".
    with pytest.raises(ConfigError, match=re.escape(f"data.shuffle_tail={tail} must be from 2 to data.snippet_len=64")):
        text_probe.build(path=write(tmp_path, TEXT * 3), snippet_len=64, shuffle_tail=tail)
    assert text_probe.build(path=write(tmp_path, TEXT * 3), label="quote", snippet_len=64, shuffle_tail=0, num_train=4,
                            num_val=4, num_test=0).num_train == 4  # read only by label=shuffled


def test_a_frozen_probe_trains_its_head_only() -> None:
    probe = char_probe.build(input_shape=(16,), num_outputs=2, vocab_size=30, norm=factory("none"), dropout=0.0,
                             input_dropout=0.0, embedding=8, hidden=12, layers=1, freeze=True)
    assert [name for name, p in probe.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    assert probe(torch.randint(30, (3, 16))).shape == (3, 2)
    probe.train()
    assert not probe.rnn.training and probe.head.training


# ---- wired into the tool: train data=text model=char_lstm, task=sample, the probe's encoder ----------

TINY_LM = ["data=text", "data.max_chars=4000", "data.seq_len=16", "model=char_lstm", "model.embedding=4",
           "model.hidden=8", "model.layers=1", "norm=none", "init=xavier", "batch_size=8", "epochs=1", "max_steps=4",
           "log_every=2", "device=cpu", "sample.length=40", "curves=false"]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hydra import compose, initialize_config_dir

    from helpers import CONF_DIR
    from trainer.run import run

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=TINY_LM)
    run_dir = tmp_path_factory.mktemp("charlm") / "run"
    run(cfg, run_dir)
    return run_dir


def test_a_char_lm_run_reports_bits_per_character_and_writes_samples_and_vocab(lm_run: Path) -> None:
    import json

    summary = json.loads((lm_run / "summary.json").read_text())
    for node in (summary["final"], summary["best"]):
        assert node["val_bpc"] == pytest.approx(node["val_loss"] / math.log(2))
    assert summary["test"]["bpc"] == pytest.approx(summary["test"]["loss"] / math.log(2))
    chars = json.loads((lm_run / "vocab.json").read_text())["chars"]
    assert chars == text.build_vocab(text.default_text()[:4000])
    samples = (lm_run / "samples.txt").read_text(encoding="utf-8")
    header, body = samples.rstrip("\n").split("\n", 1)
    assert header.startswith("--- sample 1 of 1 (temperature 0.8, seed 0)") and len(body) == 41
    assert set(body) <= set(chars)
    assert all(not record.get("input_mean") for record in map(json.loads, (lm_run / "metrics.jsonl").read_text().splitlines())
               if record["kind"] == "start")  # ids have no scale: no `inputs` finding


def test_validation_bits_per_character_are_the_per_character_mean(make_cfg) -> None:
    from trainer.engine.loop import Trainer
    from trainer.engine.parts import build_parts

    parts = build_parts(make_cfg(*TINY_LM, small=False))
    trainer = Trainer(parts, display=None, loggers=[], generator=torch.Generator())  # type: ignore[arg-type]
    metrics = trainer.evaluate()
    with torch.no_grad():
        parts.model.eval()
        logits = parts.model(parts.data.x_val)
        probability = F.softmax(logits, dim=1).gather(1, parts.data.y_val.unsqueeze(1))
        bits = float(-torch.log2(probability).mean())
        accuracy = float((logits.argmax(1) == parts.data.y_val).float().mean())
    assert metrics["val_bpc"] == pytest.approx(bits, rel=1e-5)
    assert metrics["val_acc"] == pytest.approx(accuracy)  # next-character accuracy, a fraction of positions


def test_task_sample_resamples_a_finished_run(lm_run: Path, make_cfg, tmp_path: Path) -> None:
    from trainer.tasks import run_task

    cfg = make_cfg("task=sample", f"resume={lm_run}", "sample.temperature=0", "sample.count=2", "sample.prime=The",
                   "sample.length=15")
    assert run_task(cfg, tmp_path) == 0
    blocks = (tmp_path / "samples.txt").read_text(encoding="utf-8").split("--- sample ")[1:]
    assert len(blocks) == 2 and all(block.split("\n", 1)[1].startswith("The") for block in blocks)
    assert blocks[0].split("\n", 1)[1].strip() == blocks[1].split("\n", 1)[1].strip()  # temperature 0: no draws


@pytest.mark.parametrize("setting, message", [
    ("sample.temperature=-1", "sample.temperature=-1 must be a number >= 0"),
    ("sample.length=abc", "sample.length='abc' must be an integer >= 1"),
    ("sample.count=1.5", "sample.count=1.5 must be an integer >= 1"),
    ("sample.prime=123", "sample.prime=123 must be text"),
    ("sample.prime='The\u2603'", "holds '\u2603', which is not in the run's vocabulary"),
])
def test_a_bad_sample_setting_stops_a_char_lm_run_before_it_trains(make_cfg, tmp_path: Path, setting: str,
                                                                  message: str) -> None:
    # The samples are drawn after the last epoch: found there, a bad setting cost the run its summary.
    from trainer.run import run

    with pytest.raises(ConfigError, match=re.escape(message)):
        run(make_cfg(*TINY_LM, setting, small=False), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("setting, message", [
    ("sample.length=abc", "sample.length='abc' must be an integer >= 1"),
    ("sample.count=0", "sample.count=0 must be an integer >= 1"),
    ("sample.temperature=[1,2]", "sample.temperature=[1, 2] must be a number >= 0"),
    ("sample.prime=123", "sample.prime=123 must be text"),
])
def test_task_sample_refuses_a_bad_setting_in_one_line(lm_run: Path, make_cfg, tmp_path: Path, setting: str,
                                                       message: str) -> None:
    from trainer.tasks import run_task

    with pytest.raises(ConfigError, match=re.escape(message)):
        run_task(make_cfg("task=sample", f"resume={lm_run}", setting), tmp_path)
    assert not (tmp_path / "samples.txt").exists()


def test_char_data_and_models_refuse_each_other(make_cfg) -> None:
    from trainer.engine.parts import build_parts

    with pytest.raises(ConfigError, match="cannot read character ids"):
        build_parts(make_cfg(*[o for o in TINY_LM if not o.startswith("model")], "model=mlp", small=False))
    with pytest.raises(ConfigError, match="use data=text"):
        build_parts(make_cfg("model=char_lstm"))
    with pytest.raises(ConfigError, match="character ids"):
        build_parts(make_cfg(*TINY_LM, "data.standardise=true", small=False))


def test_the_probe_copies_the_lm_encoder_after_init(lm_run: Path, make_cfg) -> None:
    from trainer.engine.checkpoint import latest_good
    from trainer.engine.parts import build_parts

    probe = ["data=text_probe", f"data.lm={lm_run}", "data.num_train=8", "data.num_val=4", "data.num_test=0",
             "data.snippet_len=16", "data.shuffle_tail=8", "model=char_probe", "model.embedding=4", "model.hidden=8",
             "model.layers=1", "norm=none", "init=xavier", "batch_size=4", "device=cpu", "max_steps=2"]
    lm_state = latest_good(lm_run)[0]["model"]  # type: ignore[index]
    pretrained = build_parts(make_cfg(*probe, f"model.encoder={lm_run}", "model.freeze=true", small=False)).model
    for key in ("embedding.weight", "rnn.weight_hh_l0", "rnn.bias_ih_l0"):
        assert torch.equal(pretrained.state_dict()[key], lm_state[key])  # not overwritten by init=xavier
    scratch_parts = build_parts(make_cfg(*probe, small=False))
    scratch = scratch_parts.model
    from trainer.engine.loop import Trainer

    trainer = Trainer(scratch_parts, display=None, loggers=[], generator=torch.Generator())  # type: ignore[arg-type]
    assert "val_bpc" not in trainer.evaluate()  # a classifier of snippets, not a language model
    assert not torch.equal(scratch.state_dict()["rnn.weight_hh_l0"], lm_state["rnn.weight_hh_l0"])
    with pytest.raises(ConfigError, match="does not fit model=char_probe"):
        build_parts(make_cfg(*[o for o in probe if o != "model.hidden=8"], "model.hidden=6", f"model.encoder={lm_run}",
                             small=False))


def test_shuffled_snippets_permute_only_their_tail() -> None:
    distinct = "".join(chr(0x4E00 + i) for i in range(3000))  # a character's code says where it stood in the text
    found, labels = text_probe.shuffled_snippets(distinct, count=40, length=20, tail=8,
                                                 generator=torch.Generator().manual_seed(0))
    assert sorted(labels) == [0] * 20 + [1] * 20
    for snippet, label in zip(found, labels):
        codes = [ord(char) for char in snippet]
        start = codes[0]
        assert codes[:12] == list(range(start, start + 12))  # the head is intact
        assert sorted(codes[12:]) == list(range(start + 12, start + 20))  # the same characters in the tail
        assert (codes[12:] == list(range(start + 12, start + 20))) == bool(label)  # in order only when labelled 1


def test_the_probe_pools_the_outputs_over_the_snippet_or_takes_the_last() -> None:
    ids = torch.randint(30, (3, 16))
    heads = {}
    for pool in char_probe.POOLS:
        torch.manual_seed(0)
        probe = char_probe.build(input_shape=(16,), num_outputs=2, vocab_size=30, norm=factory("none"), dropout=0.0,
                                 input_dropout=0.0, embedding=8, hidden=12, layers=1, pool=pool).eval()
        out, _ = probe.rnn(probe.embedding(ids))
        features = out.mean(dim=1) if pool == "mean" else out[:, -1]
        assert torch.allclose(probe(ids), probe.head(features))
        heads[pool] = probe(ids)
    assert not torch.allclose(heads["mean"], heads["last"])
    with pytest.raises(ConfigError, match="model.pool='max' is unknown"):
        char_probe.build(input_shape=(16,), num_outputs=2, vocab_size=30, norm=factory("none"), dropout=0.0,
                         input_dropout=0.0, pool="max")


@pytest.mark.parametrize("content, message", [
    (None, "is not a file"),
    (b"\xff\xfe not utf-8", "is not UTF-8"),
])
def test_the_command_refuses_a_bad_text_file_with_one_line_and_exit_2(tmp_path: Path, content: bytes | None,
                                                                   message: str) -> None:
    from in_process import train_in_process

    path = tmp_path / "book.txt"
    if content is not None:
        path.write_bytes(content)
    outcome = train_in_process(["data=text", f"data.path={path}", "model=char_lstm", "hydra.run.dir=run"], tmp_path)
    assert outcome.code == 2 and "Traceback" not in outcome.stderr
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_char_lm_run_exports_and_loads_back(lm_run: Path, tmp_path: Path) -> None:
    from trainer.tasks.export import export, load_inference

    result = export(str(lm_run), tmp_path)
    assert result["max_abs_diff"] == 0 and result["folded"] == []  # no linear layer followed by batch norm
    model = load_inference(result["file"])
    ids = torch.randint(len(json_chars(lm_run)), (2, 16))
    assert model(ids).shape == (2, len(json_chars(lm_run)), 16)


def json_chars(run_dir: Path) -> str:
    import json

    return json.loads((run_dir / "vocab.json").read_text())["chars"]


def test_the_sweep_report_ranks_character_lms_by_bits_per_character(tmp_path: Path) -> None:
    import json

    from test_report import write_job
    from trainer.sweep import report

    # Accuracy and bits disagree on purpose: the ranking must follow the bits.
    for name, acc, bpc in (("clipping=none,seed=0", 0.60, 3.4), ("clipping=norm,seed=0", 0.50, 3.1)):
        folder = write_job(tmp_path, name, [name.split(",")[0], "seed=0"], val_acc=acc, val_loss=bpc * math.log(2))
        summary = json.loads((folder / "summary.json").read_text())
        for node in ("best", "final"):
            summary[node]["val_bpc"] = bpc
        (folder / "summary.json").write_text(json.dumps(summary))
    built = report.build(tmp_path)
    assert built.metric == "best_val_bpc" and built.rows[0].label == "clipping=norm"
    header = report.markdown(built).split("| rank |")[1].splitlines()[0]
    assert "best_val_bpc" in header and "final_val_bpc" in header


def test_the_epoch_line_shows_bits_per_character_only_when_measured(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    from trainer.observe.display import PlainDisplay

    display = PlainDisplay(Console())
    row = {"epoch": 1, "step": 10, "train_loss": 1.5, "val_loss": 1.4, "val_acc": 0.6, "lr": 0.01, "elapsed": 2.0}
    display.epoch_end(row)
    display.epoch_end({**row, "val_bpc": 2.0198})
    plain, lm = capsys.readouterr().out.splitlines()
    assert "val_bpc" not in plain and "val_acc 0.6000 val_bpc 2.0198 lr" in lm


def test_the_live_table_gains_a_bits_column_for_a_character_lm() -> None:
    import io

    from rich.console import Console

    from trainer.observe.display import LiveDisplay

    display = LiveDisplay(Console(file=io.StringIO(), force_terminal=True))
    display.epoch_end({"epoch": 1, "step": 10, "train_loss": 1.5, "val_loss": 1.4, "val_acc": 0.6, "val_bpc": 2.02,
                       "lr": 0.01, "elapsed": 2.0})
    assert [str(column.header) for column in display.table.columns][3:5] == ["val_acc", "val_bpc"]
    assert display.table.row_count == 1


def test_sampling_refuses_a_run_whose_text_has_changed(tmp_path: Path, make_cfg) -> None:
    from trainer.run import run
    from trainer.tasks import run_task

    corpus = write(tmp_path, TEXT)
    overrides = [o for o in TINY_LM if not o.startswith("data.max_chars")] + [f"data.path={corpus}", "max_steps=1"]
    run(make_cfg(*overrides, small=False), tmp_path / "run")
    (tmp_path / "corpus.txt").write_text(TEXT + "Zebra!", encoding="utf-8")  # two characters it never had
    with pytest.raises(ConfigError, match="has changed since it trained"):
        run_task(make_cfg("task=sample", f"resume={tmp_path / 'run'}"), tmp_path / "sampled")
