//! `clipflow tokenize` prints, one line per stdin line, the ids
//! `open_clip.get_tokenizer(model)` gives (context length included), run
//! with no Python environment in reach: the BPE vocabulary is in the
//! binary.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

fn clipflow_tokenize(args: &[&str], input: &str) -> String {
    let mut child = Command::new(common::clipflow_bin())
        .arg("tokenize")
        .args(args)
        .env_remove("CLIPFLOW_VENV")
        .env("PATH", "")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn tokenize_prints_open_clip_ids() {
    let captions = "a photo of a cat\nTWO &amp; dogs “running”\n\nｆｕｌｌ ｗｉｄｔｈ 🐈\n";
    for (model, context_length) in [("ViT-B-32", "77"), ("RN50", "12")] {
        let script = format!(
            "import open_clip\n\
             tok = open_clip.get_tokenizer('{model}', context_length={context_length})\n\
             for row in tok({}.split('\\n')[:-1]):\n    print(' '.join(str(int(i)) for i in row))\n",
            serde_json::to_string(captions).unwrap()
        );
        let expected = common::run_oracle(&script, &[]);
        let ours = clipflow_tokenize(
            &["--model", model, "--force-context-length", context_length],
            captions,
        );
        assert_eq!(ours, expected, "{model} at context length {context_length}");
        assert_eq!(ours.lines().count(), 4);
    }
}
