//! `--precision bf16 | fp16` casts exactly the parameters OpenCLIP's
//! `convert_weights_to_lp` casts.

mod common;

use std::collections::BTreeSet;

use clipflow_core::model::precision::is_low_precision_parameter;
use clipflow_core::model::{Clip, ModelConfig, ModelOverrides};
use tch::{nn::VarStore, Device};

const ORACLE: &str = r#"
import json, sys, open_clip, torch
from open_clip.model import convert_weights_to_lp
name = sys.argv[1]
if len(sys.argv) > 2:
    open_clip.add_model_config(sys.argv[2])
model = open_clip.create_model(name)
convert_weights_to_lp(model, torch.bfloat16)
print(json.dumps(sorted(k for k, v in model.state_dict().items() if v.dtype == torch.bfloat16)))
"#;

fn check(name: &str, config_file: Option<&str>) {
    let path = config_file.map(|f| format!("{}/tests/data/{f}", env!("CARGO_MANIFEST_DIR")));
    let mut args = vec![name];
    if let Some(p) = &path {
        args.push(p);
    }
    let expected: BTreeSet<String> =
        serde_json::from_str(&common::run_oracle(ORACLE, &args)).unwrap();
    let config = match &path {
        Some(p) => {
            ModelConfig::from_json(&std::fs::read_to_string(p).unwrap(), p, &Default::default())
        }
        None => ModelConfig::by_name(name, &ModelOverrides::default()),
    }
    .unwrap();
    let vs = VarStore::new(Device::Cpu);
    let _model = Clip::new(&vs.root(), &config).unwrap();
    let ours: BTreeSet<String> = vs
        .variables()
        .into_keys()
        .filter(|n| is_low_precision_parameter(n))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(ours, expected, "{name}: parameters cast to low precision");
}

#[test]
fn low_precision_parameters_match_open_clip() {
    check("ViT-B-32", None);
    check("RN50", None);
    check("tiny-vit", Some("tiny-vit.json"));
    // Not tiny-clipa-style: OpenCLIP 3.3.0's convert_weights_to_lp raises
    // AttributeError on a biased (nn.Linear) text_projection.
    check("tiny-attn-pool", Some("tiny-attn-pool.json"));
}
