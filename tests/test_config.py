"""Config loading, overrides and validation: every error names the field."""

import pathlib

import pytest

from llmos_jax.config import ConfigError, apply_override, load_config, mesh_shape
from llmos_jax.config_checks import validate
from tests.helpers import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "field,value,devices,expected",
    [
        ("model.n_heads", 6, 1, "model.n_heads"),  # 6 does not divide d_model=64
        ("model.n_kv_heads", 3, 1, "model.n_kv_heads"),  # 3 does not divide 4 heads
        ("model.family", "bert2", 1, "model.family"),
        ("objective.name", "nope", 1, "objective.name"),
        ("mesh.data", 3, 8, "mesh"),  # 3*1*1 != 8 devices
        ("train.global_batch_size", 6, 4, "train.global_batch_size"),  # 6 % 4 data-parallel
        ("train.grad_accum_steps", 3, 1, "train.grad_accum_steps"),  # 3 does not divide 8
        ("data.seq_len", 128, 1, "data.seq_len"),  # > max_len 64
        ("optim.decay", "step", 1, "optim.decay"),
        ("optim.warmup_steps", 50, 1, "optim.warmup_steps"),  # > 10 steps
        ("model.dtype", "float8", 1, "model.dtype"),
        ("data.source", "hub", 1, "data.source"),
        ("wandb.mode", "loud", 1, "wandb.mode"),
        ("sample.top_p", 0.0, 1, "sample.top_p"),
        ("model.matmul_impl", "blas", 1, "model.matmul_impl"),
        ("model.attention_impl", "flash", 1, "model.attention_impl"),
    ],
)
def test_validation_names_the_field(field, value, devices, expected):
    c = tiny_config()
    with c.ignore_type():
        section, leaf = field.rsplit(".", 1)
        node = c
        for part in section.split("."):
            node = node[part]
        node[leaf] = value
    with pytest.raises(ConfigError) as e:
        validate(c, num_devices=devices)
    assert str(e.value).startswith(expected), str(e.value)


def test_tensor_axis_must_divide_heads():
    c = tiny_config(n_heads=4, n_kv_heads=2)
    c.mesh.data, c.mesh.tensor = 2, 4  # 4 does not divide 2 kv heads
    with pytest.raises(ConfigError, match=r"^model\.n_kv_heads: .*mesh\.tensor=4"):
        validate(c, num_devices=8)


def test_valid_config_passes_and_mesh_fills_free_axis():
    c = tiny_config()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 2, 2
    validate(c, num_devices=8)
    assert mesh_shape(c, 8) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_overrides_are_typed_and_unknown_fields_rejected():
    c = tiny_config()
    apply_override(c, "optim.lr=1")  # an int literal becomes the field's float
    assert c.optim.lr == 1.0 and isinstance(c.optim.lr, float)
    apply_override(c, "model.family=gpt2")
    assert c.model.family == "gpt2"
    apply_override(c, "train.steps=7")
    assert c.train.steps == 7
    with pytest.raises(ConfigError, match=r"^model\.widht: no such config field"):
        apply_override(c, "model.widht=3")
    with pytest.raises(ConfigError, match=r"^train\.steps"):
        apply_override(c, "train.steps=many")  # a string into an int field


@pytest.mark.parametrize(
    "name",
    [
        "tiny.py",
        "tiny.py:gpt2",
        "llama_125m.py",
        "llama_125m.py:cpu",
        "llama_1b.py",
        "llama_7b.py",
        "gpt2_small.py",
    ],
)
def test_shipped_configs_load_and_validate(name):
    c = load_config(str(ROOT / "configs" / "clm" / name))
    # Presets are validated against the device counts they are written for.
    devices = 1 if name.startswith(("tiny", "llama_125m", "gpt2")) else 8
    validate(c, num_devices=devices)  # raises ConfigError naming the field if a preset is wrong
    sizes = mesh_shape(c, devices)
    assert sizes["data"] * sizes["fsdp"] * sizes["tensor"] == devices
    assert c.train.global_batch_size % (sizes["data"] * sizes["fsdp"]) == 0


def test_config_file_argument_selects_variant():
    c = load_config(str(ROOT / "configs/clm/tiny.py") + ":gpt2", ["train.steps=5"])
    assert c.model.family == "gpt2" and c.train.steps == 5


def test_missing_config_file_is_a_clear_error():
    with pytest.raises(ConfigError, match="no such file"):
        load_config("configs/clm/nope.py")
