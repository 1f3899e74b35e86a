//! The model tables clipflow embeds are what their generators read from the
//! installed packages today: `core/src/model/configs.json` (OpenCLIP's model
//! configs), `core/src/model/timm_configs.json` (what timm's registry
//! builds for each timm tower those configs name) and
//! `core/src/model/pretrained_tags.json` (OpenCLIP's pretrained tags). A table left behind
//! after an upgrade of open_clip_torch or timm fails here.

mod common;

fn assert_table_is_current(generator: &str, table: &str, regenerate: &str) {
    let generated: serde_json::Value = serde_json::from_str(&common::run_oracle(generator, &[]))
        .expect("the generator writes JSON");
    let embedded: serde_json::Value = serde_json::from_str(table).unwrap();
    assert!(
        generated == embedded,
        "the embedded table differs from the installed packages'; run {regenerate}"
    );
}

#[test]
fn the_embedded_model_configs_are_open_clips() {
    assert_table_is_current(
        include_str!("../scripts/gen_model_configs.py"),
        include_str!("../core/src/model/configs.json"),
        "python scripts/gen_model_configs.py > core/src/model/configs.json",
    );
}

#[test]
fn the_embedded_timm_towers_are_timms() {
    assert_table_is_current(
        include_str!("../scripts/gen_timm_configs.py"),
        include_str!("../core/src/model/timm_configs.json"),
        "python scripts/gen_timm_configs.py > core/src/model/timm_configs.json",
    );
}

#[test]
fn the_embedded_pretrained_tags_are_open_clips() {
    assert_table_is_current(
        include_str!("../scripts/gen_pretrained_tags.py"),
        include_str!("../core/src/model/pretrained_tags.json"),
        "python scripts/gen_pretrained_tags.py > core/src/model/pretrained_tags.json",
    );
}
