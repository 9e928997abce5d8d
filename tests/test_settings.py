"""Every setting is validated at vtr.patch and at each live edit, by the shared validators of vtr.config:
the error names the setting, the value and what is allowed, and the model (and config) stay as they were."""
import math

import numpy as np
import pytest
import torch

import vtr
from vtr.config import ModelInfo, check_float, check_int, check_keep, check_layer
from vtr.testing import tiny_model


@pytest.fixture(scope="module")
def llava2():
    """A tiny LLaVA whose LLM has 2 decoder layers (and a 4-layer vision tower)."""
    return tiny_model("llava", text={"num_hidden_layers": 2})


def assert_untouched(model):
    assert not vtr.is_patched(model) and "forward" not in model.__dict__ and "generate" not in model.__dict__


# (reducer, settings, error type, words the message must hold: the setting, the value, what is allowed)
BAD = [
    ("aim", {"prune_start": float("nan")}, ValueError, ["prune_start", "nan", "[0, 1]"]),
    ("aim", {"prune_end": float("inf")}, ValueError, ["prune_end", "inf"]),
    ("atp", {"layers": "abcd"}, TypeError, ["layers", "'abcd'", "tuple or list"]),
    ("atp", {"layers": None}, TypeError, ["layers", "None", "tuple or list"]),
    ("random", {"seed": 2**70}, ValueError, ["seed", str(2**70), str(2**63 - 1)]),
    ("random", {"seed": -1}, ValueError, ["seed", "-1", "[0, "]),
    ("random", {"seed": 1.5}, TypeError, ["seed", "1.5", "int"]),
    ("atp", {"layers": (100, 200, 300, 400)}, ValueError, ["layers[0]", "100", "1..1"]),
    ("atp", {"layers": (-1, -2, -3, -4)}, ValueError, ["layers[0]", "-1"]),
    ("aim", {"temperature": True}, TypeError, ["temperature", "True", "number"]),
    ("atp", {"scale": True}, TypeError, ["scale", "True", "number"]),
    ("atp", {"mass": (0.9, 0.8, 0.7, float("nan"))}, ValueError, ["mass[3]", "nan"]),
    ("fastv", {"layer": 2}, ValueError, ["layer=2", "2 layers", "1..1"]),
    ("fastv", {"layer": True}, TypeError, ["layer", "True", "int"]),
    ("fastv", {"keep": True}, TypeError, ["keep", "True"]),
    ("fastervlm", {"keep": float("nan")}, ValueError, ["keep", "nan", "(0, 1]"]),
    ("fastervlm", {"keep": float("inf")}, ValueError, ["keep", "inf", "(0, 1]"]),
    ("fastervlm", {"keep": np.bool_(True)}, TypeError, ["keep", "True"]),
    ("aim", {"prune_end": 3}, ValueError, ["prune_end=3", "2 layers"]),
    ("aim", {"iterations": 2.0}, TypeError, ["iterations", "2.0", "int"]),
    ("vtc_cls", {"start_layer": 10}, ValueError, ["start_layer=10", "vision tower of 4 layers"]),
    ("fopru", {"strategy": "rows"}, ValueError, ["strategy", "'rows'", "'rank', 'row'"]),
    ("pool", {"anchor": 3}, ValueError, ["anchor", "3", "'center'"]),
    ("atp", {"budget": "total"}, ValueError, ["budget", "'total'", "'sample', 'mean'"]),
    ("atp", {"adapt": -0.1}, ValueError, ["adapt", "-0.1", "[0, 1]"]),
]


@pytest.mark.parametrize("reducer, settings, error, words", BAD, ids=[f"{r}-{next(iter(s))}" for r, s, _, _ in BAD])
def test_bad_setting_fails_at_patch_time_naming_it(llava2, reducer, settings, error, words):
    model, _ = llava2
    with pytest.raises(error) as raised:
        vtr.patch(model, reducer, **settings)
    message = str(raised.value)
    for word in words:
        assert word in message, (word, message)
    assert_untouched(model)


@pytest.mark.parametrize("reducer, name, value, error", [
    ("fastv", "layer", 2, ValueError),           # the depth is known after patching: checked at the edit
    ("aim", "prune_start", float("nan"), ValueError),
    ("atp", "layers", (1, 5), ValueError),
    ("atp", "layers", "abcd", TypeError),
    ("random", "seed", 2**70, ValueError),
    ("fastervlm", "keep", True, TypeError),
    ("aim", "temperature", False, TypeError),
])
def test_bad_live_edit_raises_at_once_and_leaves_the_config(llava2, reducer, name, value, error):
    model, _ = llava2
    with vtr.patched(model, reducer, **({"layer": 1} if reducer == "fastv" else {})):
        before = getattr(model.vtr.config, name)
        with pytest.raises(error, match=name):
            setattr(model.vtr.config, name, value)
        assert getattr(model.vtr.config, name) == before


def test_renumber_on_qwen2_vl_is_refused_at_the_edit():
    model, _ = tiny_model("qwen2_vl")
    with vtr.patched(model, "fastervlm", keep=0.5):
        with pytest.raises(ValueError, match=r"positions='renumber' is not supported for 'qwen2_vl'.*original"):
            model.vtr.config.positions = "renumber"
        assert model.vtr.config.positions == "original"


@pytest.mark.parametrize("keep, stored", [
    (np.float32(0.25), float(np.float32(0.25))), (np.float64(0.25), 0.25), (np.int64(5), 5), (np.int32(7), 7),
])
def test_numpy_scalars_of_the_right_kind_are_accepted_as_python_numbers(llava2, keep, stored):
    model, processor = llava2
    with vtr.patched(model, "fastervlm", keep=keep):
        assert model.vtr.config.keep == stored and type(model.vtr.config.keep) is type(stored)
        model.vtr.config.keep = np.float32(0.5)
        assert type(model.vtr.config.keep) is float


def test_numpy_layer_and_seed_settings(llava2):
    model, _ = llava2
    with vtr.patched(model, "random", seed=np.int64(3)):
        assert type(model.vtr.config.seed) is int and model.vtr.config.seed == 3
    with vtr.patched(model, "atp", layers=[np.int64(1)], mass=[np.float32(0.5)], stride=[np.int16(2)]):
        assert model.vtr.config.layers == (1,) and model.vtr.config.stride == (2,)


def test_shared_validators_directly():
    assert check_keep(np.float32(0.5)) == 0.5 and check_keep(3) == 3
    with pytest.raises(TypeError, match="ratio"):
        check_keep(3, counts=False)
    assert check_int(np.uint8(4), "n", low=1) == 4
    with pytest.raises(ValueError, match=r"n must be an int >= 1, got 0"):
        check_int(0, "n", low=1)
    assert check_float(2, "t", low=0, low_open=True) == 2.0
    with pytest.raises(ValueError, match="finite"):
        check_float(-math.inf, "t")
    assert check_layer(0.5, "l", depth=4) == 0.5 and check_layer(-1, "l", depth=4, negative=True) == -1
    with pytest.raises(ValueError, match="allowed: 0..3 or -4..-1"):
        check_layer(-5, "l", depth=4, negative=True)


def test_a_config_bound_by_patch_is_a_copy(llava2):
    """The caller's config object is not bound to the model: it stays usable for another model."""
    from vtr.reducers.fastv import FastVConfig

    model, _ = llava2
    config = FastVConfig(keep=0.5, layer=3)  # fine in general, too deep for this LLM
    with pytest.raises(ValueError, match="layer=3"):
        vtr.patch(model, config)
    assert config.model_info is None
    config.bind(ModelInfo("llava", llm_layers=8))
    assert config.layer == 3


def test_settings_apply_the_same_way_in_a_forward(llava2):
    model, processor = llava2
    from vtr.testing import example_inputs

    inputs = example_inputs(processor, "llava", batch=1, seed=0)
    with vtr.patched(model, "random", keep=np.int64(10), seed=np.int64(2)):
        with torch.no_grad():
            model(**inputs)
        assert model.vtr.stats.visual_tokens_out == [10]
