"""Write the tiny Hugging Face GPT-2 fixture of the import/export tests (needs torch + transformers).

    python scripts/make_hf_fixture.py [--out tests/fixtures/hf-gpt2-tiny]

`torch` and `transformers` are not dependencies of sparsetrain: run this with a Python that has
them. It saves, with `save_pretrained` (config.json, model.safetensors, tokenizer files):

- a random `GPT2LMHeadModel` (2 layers, width 128, 4 heads, 64 positions, vocabulary 320),
  parameters drawn N(0, 0.1) (LayerNorm scales 1 + N(0, 0.1)) so that every tensor, biases and
  LayerNorms included, changes the logits;
- a byte-level BPE tokenizer (256 bytes, `<|endoftext|>`, merges learned on a fixed text) whose
  vocabulary is the model's;
- `reference.npz`: fixed token ids `tokens` int32 (2, 24), the logits transformers computes on them
  `logits` float32 (2, 24, 320), and its mean next-token loss `loss` (nats).

About 1.9 MB in all: small enough to commit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

EOT = "<|endoftext|>"
VOCAB, LAYERS, WIDTH, HEADS, POSITIONS = 320, 2, 128, 4, 64
TEXT = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.
the king queen lord lady sword crown night day love death war peace heart blood speak come go
"""


def make_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT] * 4, trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    return tok


def make_model(eot_id: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=WIDTH, n_layer=LAYERS,
                        n_head=HEADS, bos_token_id=eot_id, eos_token_id=eot_id)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.1)
            if "ln" in name and name.endswith("weight"):
                p.add_(1.0)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tests/fixtures/hf-gpt2-tiny")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer()
    eot_id = tok.token_to_id(EOT)
    model = make_model(eot_id)
    model.save_pretrained(out, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT,
                            model_max_length=POSITIONS).save_pretrained(out)
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(2, 24)).astype(np.int32)
    with torch.no_grad():
        ids = torch.from_numpy(tokens).long()
        result = model(ids, labels=ids)
    np.savez_compressed(out / "reference.npz", tokens=tokens, logits=result.logits.numpy().astype(np.float32),
                        loss=np.float32(result.loss.item()))
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out}: {', '.join(sorted(f.name for f in out.iterdir()))} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
