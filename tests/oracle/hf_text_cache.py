"""Writes a HuggingFace hub cache holding one small text model, laid out as
huggingface_hub lays out its downloads (models--ORG--NAME/refs/main and
snapshots/REVISION/), for the HuggingFace text tower tests.

The model is REPO's architecture (MODEL_TYPE: roberta, xlm-roberta, mt5 or
m2m_100) at a small size: config.json always; with --weights, also the
weights of the task model the hub's files hold for that architecture (a
masked-LM roberta, whose names carry the `roberta.` prefix and an `lm_head`;
an mt5 or nllb for generation, with its `shared` embedding, encoder and
decoder), saved by transformers' save_pretrained.

With --tokenizer (roberta only), also a byte-level BPE tokenizer of the
model's 1000 ids with RoBERTa's <s> ... </s> and <pad> = 1, trained on a few
captions with the `tokenizers` library and saved as transformers saves it.

usage: hf_text_cache.py CACHE_DIR REPO MODEL_TYPE [--weights] [--tokenizer]
"""
import pathlib
import sys

import torch
from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

cache, repo, model_type = sys.argv[1:4]
weights = "--weights" in sys.argv[4:]
if model_type == "mt5":
    config = AutoConfig.for_model(
        model_type,
        vocab_size=1000,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=1,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    task_model = AutoModelForSeq2SeqLM
elif model_type == "m2m_100":
    config = AutoConfig.for_model(
        model_type,
        vocab_size=1000,
        d_model=64,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=80,
        activation_function="relu",
        scale_embedding=True,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    task_model = AutoModelForSeq2SeqLM
else:
    config = AutoConfig.for_model(
        model_type,
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=80,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    task_model = AutoModelForMaskedLM
repo_dir = pathlib.Path(cache) / f"models--{repo.replace('/', '--')}"
snapshot = repo_dir / "snapshots" / "0123456789abcdef"
snapshot.mkdir(parents=True)
(repo_dir / "refs").mkdir()
(repo_dir / "refs" / "main").write_text("0123456789abcdef")
config.save_pretrained(snapshot)
if weights:
    torch.manual_seed(1)
    task_model.from_config(config).save_pretrained(snapshot)
if "--tokenizer" in sys.argv[4:]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    words = ["a photo of a", "red", "green", "blue", "circle", "square", "triangle", "on", "the", "left"]
    tokenizer.train_from_iterator([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 20, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", mask_token="<mask>",
    ).save_pretrained(snapshot)
