"""A CLIP-format BPE vocabulary for the toy world, learned from its own words.

CLIPTokenizer reads `vocab.json` and `merges.txt`. We learn merges with plain BPE over the
toy vocabulary until every word is a single token, and keep all single characters so an
unknown word still tokenizes (as characters) instead of failing.
"""
from __future__ import annotations

import json
import string
from collections import Counter
from pathlib import Path

END = "</w>"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 16  # toy prompts are short; keeps cross-attention cheap


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Greedy BPE: merge the most frequent adjacent pair until each word is one symbol."""
    pieces = {w: list(w[:-1]) + [w[-1] + END] for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols in pieces.values():
            pairs.update(zip(symbols, symbols[1:]))
        if not pairs:
            return merges
        # Most frequent pair; ties broken alphabetically so the result is deterministic.
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for word, symbols in pieces.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            pieces[word] = merged


def write_tokenizer(words: list[str], folder: Path) -> None:
    """Write vocab.json, merges.txt and the tokenizer configs that diffusers expects."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted(set(string.ascii_lowercase + string.digits + ",.-'"))
    merges = learn_merges(words)
    tokens = chars + [c + END for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2)
    )
