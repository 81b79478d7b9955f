"""A BERT-base-shaped model with random weights, saved as a local model directory (``model.path=``), with a given
tokenizer: end-to-end timing runs of RoBERTa-base's size where no pre-trained weights can be fetched (a GPU
machine without the Hub). Speed does not depend on the weights; the architecture is RoBERTa-base's (12 layers,
hidden 768, 12 heads, FFN 3072), the vocabulary the tokenizer's.

    python scripts/random_model.py --tokenizer ../shared/models/all-MiniLM-L6-v2 --out /tmp/bert-base-random
    python -m dynrank.train model=minilm model.path=/tmp/bert-base-random ...
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="a directory holding a BERT tokenizer (vocab.txt, ...)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                 intermediate_size=3072, max_position_embeddings=512))
    out = Path(args.out)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (Path(args.tokenizer) / name).exists():
            shutil.copy(Path(args.tokenizer) / name, out / name)
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters)")


if __name__ == "__main__":
    main()
