"""metrics.jsonl lines: a non-finite float is null, whatever the record's shape; finite records are written as they are."""
import json
import math

from trainer.observe.records import MetricsLog, json_line


def test_non_finite_floats_become_null_at_any_depth_and_strings_stay():
    record = {"kind": "layers", "loss": float("nan"), "note": "NaN and Infinity are words here",
              "layers": [{"act_std": float("inf"), "grad_norm": -float("inf"), "name": "NaN"}], "pair": (1.0, math.nan)}
    assert json.loads(json_line(record)) == {"kind": "layers", "loss": None, "note": "NaN and Infinity are words here",
                                             "layers": [{"act_std": None, "grad_norm": None, "name": "NaN"}],
                                             "pair": [1.0, None]}


def test_a_finite_record_is_written_as_json_dumps_writes_it(tmp_path):
    record = {"kind": "epoch", "epoch": 3, "val_loss": 0.25, "layers": [{"name": "net.0", "dead_fraction": None}]}
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.log(record)
    log.log({"kind": "step", "train_loss": float("nan")})
    log.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines == [json.dumps(record), '{"kind": "step", "train_loss": null}']
