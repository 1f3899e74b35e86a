"""Oracle side of tests/tokenizer_parity.rs's HuggingFace tokenizers.

Builds a tokenizer of each kind OpenCLIP's configs name (a SentencePiece-style
Unigram with T5's closing </s>, as SigLIP's; a lower-casing WordPiece with
[CLS] ... [SEP], as BERT's; a byte-level BPE with <s> ... </s>, as RoBERTa's),
trained on the corpus with the `tokenizers` library, saves each the way
transformers does (tokenizer.json, tokenizer_config.json,
special_tokens_map.json, beside a model's config.json) into a HuggingFace
hub cache under HUB, and prints,
for each model config in MODELS (each naming one as hf_tokenizer_name), one
line: OpenCLIP's get_tokenizer(name) ids of every caption, as JSON, with the
hub offline.

usage: hf_tokenizer_parity.py CORPUS HUB MODELS NAME...
"""
import json
import os
import sys

corpus, hub, models, *names = sys.argv[1:]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = hub

import open_clip  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models as kinds  # noqa: E402
from tokenizers import normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

with open(corpus) as f:
    captions = [json.loads(line) for line in f]

REVISION = "0123456789abcdef0123456789abcdef01234567"


def save(repo, tokenizer, **special_tokens):
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special_tokens)
    repo_dir = os.path.join(hub, "models--" + repo.replace("/", "--"))
    snapshot = os.path.join(repo_dir, "snapshots", REVISION)
    fast.save_pretrained(snapshot)
    # A model repo's config.json, which transformers' AutoTokenizer reads
    # first (empty: the tokenizer's class is in tokenizer_config.json).
    with open(os.path.join(snapshot, "config.json"), "w") as f:
        f.write("{}")
    os.makedirs(os.path.join(repo_dir, "refs"), exist_ok=True)
    with open(os.path.join(repo_dir, "refs", "main"), "w") as f:
        f.write(REVISION)


def unigram():
    tokenizer = Tokenizer(kinds.Unigram())
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=20000, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tokenizer.train_from_iterator(captions, trainer)
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)])
    save("clipflow-test/unigram", tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def wordpiece():
    tokenizer = Tokenizer(kinds.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=3000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer.train_from_iterator(captions, trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    save("clipflow-test/wordpiece", tokenizer, pad_token="[PAD]", sep_token="[SEP]",
         cls_token="[CLS]", unk_token="[UNK]", mask_token="[MASK]")


def byte_level_bpe():
    tokenizer = Tokenizer(kinds.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=3000, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(captions, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>")))
    save("clipflow-test/bpe", tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
         unk_token="<unk>")


unigram()
wordpiece()
byte_level_bpe()
open_clip.add_model_config(models)
for name in names:
    tokenizer = open_clip.get_tokenizer(name)
    print(json.dumps(tokenizer(captions).tolist()), flush=True)
