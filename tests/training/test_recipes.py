import pytest

from training.recipes import RecipeError, STAGE_NAMES, available_recipes, load_recipe, parse_recipe


def test_available_and_smoke_structure():
    assert {"smoke", "longvila-7b"} <= set(available_recipes())
    r = load_recipe("smoke")
    assert [s.name for s in r.stages] == list(STAGE_NAMES)
    assert r.stage(1).trainable == ("mm_projector",)
    assert set(r.stage(2).trainable) == {"mm_projector", "llm"}
    assert set(r.stage(3).trainable) == {"vision_tower", "mm_projector", "llm"}
    s4 = r.stage("stage4_context_extension")
    assert s4.lora is not None and s4.lora.r == 8 and s4.lora.alpha == 16
    assert s4.lora.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert [p.max_length for p in s4.phases] == sorted(p.max_length for p in s4.phases)
    assert r.stage(5).sp_degree == 2 and r.stage(5).data.kind == "long_video_sft"
    assert r.stage("stage5") is r.stage(5)


def test_longvila_7b_matches_reference_table():
    from training.model.profiles import get_profile

    r = load_recipe("longvila-7b")
    prof = get_profile(r.model_profile)  # the model profile exists
    assert prof.text["model_type"] == "qwen2" and prof.text["hidden_size"] == 3584
    s4 = r.stage(4)
    # official stage-4 scripts: max length -> rope_theta
    assert {p.max_length: p.rope_theta for p in s4.phases} == {
        131072: 15_300_000, 262144: 207_112_184, 524288: 1_062_356_830, 1048576: 3_580_165_449}
    assert s4.optimizer.lr == 2e-5 and s4.schedule.name == "constant" and s4.schedule.warmup_steps == 2
    assert s4.trainable == ("llm",) and (s4.lora.r, s4.lora.alpha) == (8, 16)
    assert set(s4.lora.trainable_extra) == {"embed_tokens", "norm"}
    s5 = r.stage(5)
    assert s5.optimizer.lr == 2e-5 and s5.num_frames == 256 and s5.schedule.name == "cosine"
    assert s5.schedule.warmup_ratio == 0.03 and s5.fps == 2.0 and s5.epochs == 6
    assert s5.max_length == 131072 and s5.sp_degree == 14
    # Ulysses degree must divide the head count (28 for Qwen2-7B) in every stage
    assert all(prof.text["num_attention_heads"] % s.ulysses_degree == 0 for s in r.stages)
    assert r.stage(1).trainable == ("mm_projector",)
    assert "vision_tower" not in r.stage(2).trainable


def _base():
    return {"name": "x", "model_profile": "smoke",
            "stages": {n: {"trainable": ["llm"], "data": {"kind": "captions"}, "max_length": 64} for n in STAGE_NAMES}}


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["stages"].pop("stage3_short_sft"), "missing ['stage3_short_sft']"),
    (lambda d: d["stages"]["stage1_alignment"].update(trainable=["decoder"]), "unknown module 'decoder'"),
    (lambda d: d["stages"]["stage2_pretraining"].update(optimizer={"name": "adamw", "lr": "fast"}), "optimizer.lr"),
    (lambda d: d["stages"]["stage1_alignment"].update(bogus=1), "unknown field(s) ['bogus']"),
    (lambda d: d["stages"]["stage4_context_extension"].update(
        phases=[{"max_length": 128, "rope_theta": 2e5}, {"max_length": 64, "rope_theta": 1e6}]), "must raise both"),
    (lambda d: d["stages"]["stage1_alignment"].update(data={"kind": "external"}), "needs at least one path"),
    (lambda d: d["stages"]["stage1_alignment"].update(trainable=["mm_projector"], lora={"r": 8}),
     "`llm` must be trainable"),
])
def test_invalid_recipes_name_field_and_reason(mutate, needle):
    d = _base()
    mutate(d)
    with pytest.raises(RecipeError) as ei:
        parse_recipe(d, "bad.yaml")
    assert needle in str(ei.value) and "bad.yaml" in str(ei.value)


def test_unknown_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="available"):
        load_recipe("does-not-exist")
    p = tmp_path / "r.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)
