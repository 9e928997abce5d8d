# --- appended by integration/tfsuite/run_new_families.sh: compatibility shims for test files whose version differs
# from the installed transformers (each applies only when its condition holds; none changes what a test asserts) ---
import inspect as _inspect


@pytest.fixture(autouse=True)
def _vtr_new_family_compat(request, monkeypatch):
    mod = request.module
    # Qwen3-VL: the VLM tester hands its text rope dict to the vision config too; a vision config that takes
    # `rope_parameters` (transformers 5.24) rewrites that dict in place to its own axial rope, so every later text
    # config gets rope_type="axial". The vision config keeps its own default rope instead.
    q3 = getattr(mod, "Qwen3VLVisionText2TextModelTester", None)
    if q3 is not None and "get_vision_config" not in q3.__dict__ and \
            "rope_parameters" in _inspect.signature(q3.vision_config_class.__init__).parameters:
        def get_vision_config(self):
            kwargs = self._collect_kwargs(self.vision_config_args, self.vision_config_class)
            kwargs.pop("rope_parameters", None)
            return self.vision_config_class(**kwargs)

        monkeypatch.setattr(q3, "get_vision_config", get_vision_config)
    # Gemma 3: an older tester names its classes model_class / for_causal_lm_class, which the newer
    # CausalLMModelTester of the tree rejects; give them the names it expects.
    g3 = getattr(mod, "Gemma3ModelTester", None)
    if g3 is not None and "model_class" in g3.__dict__ and hasattr(g3, "_verify_and_infer_model_attributes"):
        monkeypatch.setattr(g3, "base_model_class", g3.__dict__["model_class"])
        monkeypatch.delattr(g3, "model_class")
        if "for_causal_lm_class" in g3.__dict__:
            monkeypatch.setattr(g3, "causal_lm_class", g3.__dict__["for_causal_lm_class"])
            monkeypatch.delattr(g3, "for_causal_lm_class")
    # Qwen2.5-VL: an older tester passes no mm_token_type_ids, from which transformers 5.x computes M-RoPE
    # positions (without them the unpatched model falls back to 1-D positions); add the processor's.
    q25 = getattr(mod, "Qwen2_5_VLVisionText2TextModelTester", None)
    if q25 is not None:
        prepare = q25.prepare_config_and_inputs_for_common

        def prepare_with_types(self):
            config, inputs = prepare(self)
            ids = inputs.get("input_ids")
            if ids is not None and "mm_token_type_ids" not in inputs:
                inputs["mm_token_type_ids"] = (ids == config.image_token_id).long() + 2 * (ids == config.video_token_id).long()
            return config, inputs

        monkeypatch.setattr(q25, "prepare_config_and_inputs_for_common", prepare_with_types)
    yield
