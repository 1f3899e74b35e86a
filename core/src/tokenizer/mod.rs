//! The CLIP BPE tokenizer (ids identical to `open_clip.tokenize`) and HuggingFace tokenizer.json support.
