"""parallel.engine=deepspeed: the DeepSpeed config generated from ours, a user's JSON merged
on top, and a key there that contradicts ours as a one-line error."""

from __future__ import annotations

import json

import pytest

from triforge.trainer.deepspeed_engine import deepspeed_config

OURS = dict(batch_size=16, micro_batch_size=2, dp=2, grad_clip=1.0, stage=2,
            offload_optimizer=False, offload_params=False)


def test_the_generated_config_follows_the_job():
    cfg = deepspeed_config(**{**OURS, "stage": 3, "offload_optimizer": True})
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"],
            cfg["gradient_accumulation_steps"]) == (16, 2, 4)
    assert cfg["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"}}
    assert cfg["gradient_clipping"] == 1.0 and not cfg["bf16"]["enabled"]


def test_micro_batch_size_zero_is_one_micro_batch_per_rank():
    cfg = deepspeed_config(**{**OURS, "micro_batch_size": 0})
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (8, 1)


def test_a_user_json_is_merged_and_may_repeat_our_values(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, "reduce_bucket_size": 1000},
                                "train_batch_size": 16, "comms_logger": {"enabled": True}}))
    cfg = deepspeed_config(**OURS, user_file=str(path))
    assert cfg["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 1000}
    assert cfg["comms_logger"] == {"enabled": True} and cfg["train_batch_size"] == 16


@pytest.mark.parametrize("user, key", [
    ({"train_batch_size": 32}, "train_batch_size"),
    ({"bf16": {"enabled": True}}, "bf16.enabled"),
    ({"zero_optimization": {"stage": 3}}, "zero_optimization.stage"),
    ({"gradient_accumulation_steps": 1}, "gradient_accumulation_steps"),
])
def test_a_user_json_that_contradicts_our_config_is_an_error(tmp_path, user, key):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user))
    with pytest.raises(ValueError, match=rf"'{key}' is .* there but .* from triforge's config; "
                                         "remove it from the file") as err:
        deepspeed_config(**OURS, user_file=str(path))
    assert "\n" not in str(err.value)


def test_an_unreadable_user_json_is_an_error(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read it as JSON"):
        deepspeed_config(**OURS, user_file=str(path))
    with pytest.raises(ValueError, match="cannot read it as JSON"):
        deepspeed_config(**OURS, user_file=str(tmp_path / "missing.json"))
