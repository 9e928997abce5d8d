"""VTC-CLS: the summed [CLS] attention against eager attention of every layer of a deep copy of the tower."""
import copy

import pytest
import torch

import vtr
from reference import reference_topk
from test_llava_next import reference_views, tower_crops
from vtr.reducers.base import Reducer
from vtr.registry import register_reducer, unregister_reducer
from vtr.testing import example_inputs, tiny_model


def eager_cls_layers(tower, pixel_values):
    """``(n, L, P)``: ``attentions[l][:, :, 0, 1:].mean(1)`` of every layer, from eager attention."""
    tower = copy.deepcopy(tower)
    tower.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = tower(pixel_values, output_attentions=True).attentions
    return torch.stack([a[:, :, 0, 1:].float().mean(1) for a in attentions], dim=1)


@pytest.mark.parametrize("settings, layers", [
    ({}, [2]),  # 16/24 of 4 layers rounds to 3, after end_layer=-2 (layer 2): moved to it
    ({"start_layer": 0}, [0, 1, 2]),
    ({"start_layer": 0.25, "end_layer": -1}, [1, 2, 3]),
    ({"start_layer": 1, "end_layer": 0.5}, [1, 2]),
])
def test_keeps_topk_of_summed_eager_cls_attention(llava, inputs2, settings, layers):
    model, _ = llava
    scores = eager_cls_layers(model.model.vision_tower, inputs2["pixel_values"])[:, layers].sum(1)
    vtr.patch(model, "vtc_cls", keep=0.1, **settings)
    model(**inputs2)
    for view, s in zip(model.vtr.stats.views, scores):
        assert torch.equal(view.kept, reference_topk(s, 58))


def test_paper_range_on_24_layers():
    from vtr.reducers.vtc_cls import VTCCLS, VTCCLSConfig

    assert VTCCLS(VTCCLSConfig()).layer_range(24) == (16, 22)  # the reference's attentions[16:-1]
    assert VTCCLS(VTCCLSConfig()).layer_range(32) == (21, 30)


def test_llava_next_per_surviving_view():
    model, processor = tiny_model("llava_next")
    inputs = example_inputs(processor, "llava_next", batch=2, seed=1)
    scores = eager_cls_layers(model.model.vision_tower, tower_crops(model, inputs))[:, 0:3].sum(1)
    vtr.patch(model, "vtc_cls", keep=0.25, start_layer=0)
    model(**inputs)
    views = reference_views(model, inputs["image_sizes"])
    assert len(model.vtr.stats.views) == len(views)
    for record, (_, _, crop, patches) in zip(model.vtr.stats.views, views):
        assert torch.equal(record.kept, reference_topk(scores[crop][patches], int(0.25 * len(patches) + 0.5)))


def test_video_llava_per_frame():
    model, processor = tiny_model("video_llava")
    inputs = example_inputs(processor, "video_llava", "video", batch=1, seed=2)
    frames = inputs["pixel_values_videos"].flatten(0, 1)
    scores = eager_cls_layers(model.model.video_tower, frames)[:, 1:3].sum(1)
    vtr.patch(model, "vtc_cls", keep=0.1, start_layer=1)
    model(**inputs)
    assert len(model.vtr.stats.views) == len(frames)
    for record, s in zip(model.vtr.stats.views, scores):
        assert torch.equal(record.kept, reference_topk(s, 26))


def test_qwen2_vl_is_refused_with_a_pointer_to_fastervlm():
    model, _ = tiny_model("qwen2_vl")
    with pytest.raises(ValueError, match="not 'qwen2_vl'.*\\[CLS\\].*'fastervlm'"):
        vtr.patch(model, "vtc_cls")  # refused at patch time
    assert not vtr.is_patched(model)


def test_bad_layer_settings(llava, inputs2):
    model, _ = llava
    for bad, error in ((1.5, ValueError), ("16", TypeError), (True, TypeError)):
        with pytest.raises(error, match="start_layer .*fraction of the vision tower depth"):
            vtr.patch(model, "vtc_cls", start_layer=bad)
    assert not vtr.is_patched(model)
    with torch.no_grad():
        reference = model(**inputs2).logits
    # the tower's depth is known at patch time: the order and the range are checked there, and at each edit
    with pytest.raises(ValueError, match="start_layer=3 .* comes after end_layer=1"):
        vtr.patch(model, "vtc_cls", start_layer=3, end_layer=1)
    vtr.patch(model, "vtc_cls", start_layer=1, end_layer=2)
    with pytest.raises(ValueError, match="start_layer=4 is out of range .* 4 layers; allowed: 0..3 or -4..-1"):
        model.vtr.config.start_layer = 4  # a 4-layer tower has layers 0..3
    assert model.vtr.config.start_layer == 1
    vtr.unpatch(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs2).logits, reference)  # rejected calls left the model as it was


def test_undeclared_layer_signal_is_a_clear_error(llava, inputs2):
    """The adapter probes every layer only for reducers that declare it; others get told how."""

    @register_reducer("test_undeclared_layers")
    class Undeclared(Reducer):
        def plan(self, visual):
            visual.signal("cls_attention_layers")

    try:
        model, _ = llava
        vtr.patch(model, "test_undeclared_layers")
        with pytest.raises(RuntimeError, match="must declare it in its class attribute vision_signals"):
            model(**inputs2)
    finally:
        unregister_reducer("test_undeclared_layers")
