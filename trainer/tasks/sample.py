"""Text from a trained character LM (model=char_lstm), written to `samples.txt`.

Every data=text training run ends by writing `samples.txt` into its run folder with the `sample:`
settings; `train task=sample resume=RUN_DIR sample.temperature=0.5` samples a finished run again
(into its own folder), with other settings, without training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group
from rich.text import Text
from torch import nn

from trainer.errors import ConfigError
from trainer.models.char_lm import CharLSTM, check_sample_settings, sample

FILE = "samples.txt"


def write_samples(model: nn.Module, chars: str, run_dir: Path, *, length: int, temperature: float, prime: str,
                  count: int, seed: int) -> dict[str, Any]:
    """`count` samples (seeds seed, seed + 1, ...) into RUN/samples.txt, each under a header line."""
    if not isinstance(model, CharLSTM):
        raise ConfigError(f"sampling needs a model=char_lstm run; this one's model is {type(model).__name__}")
    check_sample_settings(length=length, temperature=temperature, prime=prime, count=count, chars=chars)
    texts = [sample(model, chars, length, temperature, prime, seed + i) for i in range(count)]
    blocks = [f"--- sample {i + 1} of {count} (temperature {temperature}, seed {seed + i}) ---\n{text}\n"
              for i, text in enumerate(texts)]
    (run_dir / FILE).write_text("\n".join(blocks), encoding="utf-8")
    return {"file": str(run_dir / FILE), "temperature": temperature, "length": length, "prime": prime,
            "seeds": [seed + i for i in range(count)], "samples": texts}


def sample_run(resume: str | None, run_dir: Path, *, seed: int, length: int, temperature: float, prime: str,
               count: int) -> dict[str, Any]:
    """task=sample: samples of the char LM run `resume` names, into this task's run folder."""
    from trainer.engine.trained import load_run

    check_sample_settings(length=length, temperature=temperature, prime=prime, count=count)  # before the run loads
    trained = load_run(resume, "sample")
    if not trained.data.char_lm or trained.data.chars is None:
        raise ConfigError(f"task=sample needs a char LM run (data=text, model=char_lstm); resume={resume} is a "
                          f"data={trained.config['data'].get('name')} run")
    result = write_samples(trained.model, trained.data.chars, run_dir, length=length, temperature=temperature,
                           prime=prime, count=count, seed=seed)
    return {**result, "checkpoint": str(trained.path)}


def render(result: dict[str, Any]) -> Group:
    lines = [Text(f"{len(result['samples'])} sample(s) at temperature {result['temperature']} -> {result['file']}",
                  style="bold")]
    lines += [Text(text) for text in result["samples"]]
    return Group(*lines)
