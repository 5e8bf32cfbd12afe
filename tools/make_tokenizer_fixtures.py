"""Record llama.cpp's tokenizer output for the real test models (ground truth for tests/test_tokenizer.py).

Runs only with a Python that has llama-cpp-python (not a forge dependency, not run in CI):

    /work/llvenv/bin/python tools/make_tokenizer_fixtures.py [--models-dir DIR]

For each model it loads the vocabulary only (no weights) through llama.cpp's C API and writes
tests/fixtures/tokenize_<name>.json with:

* `cases`: token ids of `llama_tokenize(text, add_special, parse_special)` for every flag pair, for
  a hand-picked text set (whitespace runs, digits, code, accents, CJK, emoji, mixed scripts,
  special tokens, long words, ...) and a seeded random corpus built from the same ingredients;
* `detok`: `llama_detokenize(ids, remove_special, unparse_special)` bytes (hex) for the hand-picked
  texts;
* `pieces`: `llama_token_to_piece(id, special)` bytes (hex) for a sample of ids;
* `vocab`: bos/eos/eot ids, add_bos/add_eos, the end-of-generation set and every non-NORMAL token
  attribute, as llama.cpp derives them from the metadata.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import sys
from pathlib import Path

import llama_cpp
import llama_cpp.llama_cpp as L

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}

CODE = '''def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    seq = [0, 1]
    while len(seq) < n:
\tseq.append(seq[-1] + seq[-2])  # tab-indented on purpose
    return seq[:n]


if __name__ == "__main__":
    print(fibonacci(10))
'''

TEXTS = [
    "",
    " ",
    "  ",
    "\n",
    "Hello world",
    " Hello world",
    "   leading spaces",
    "trailing spaces   ",
    "  a\n\n\tb   c",
    "\t\ttabs\tand\r\nCRLF\r\n",
    "1234567 3.14159 0000",
    "Version 2.0.1-rc3 costs $1,234.56 (or €99)",
    CODE,
    "naïve café über Ärger façade",
    "你好，世界。日本語のテキスト",
    "한국어 텍스트와 English mixed",
    "👋🏽 family: 👨‍👩‍👧",
    "flags 🇺🇸🇯🇵 and hearts ❤️💔",
    "Привет, мир! Ελληνικά. مرحبا بالعالم. नमस्ते दुनिया. สวัสดีชาวโลก",
    "mixed: abcАБВ123١٢٣ 漢字かなカナ",
    "I'm sure they'll say it's what we've done, isn't it? I'D SAY 'QUOTED'.",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\nhi<end_of_turn>",
    "<|endoftext|>text after eot",
    "text<eos>more<pad> <unk> <mask>",
    "<unused0><unused12> [multimodal] <start_of_image>",
    "html <div><ul><li>item</li></ul></div> </html>",
    "literal byte tokens <0x41><0x0A> and ▁ spaces▁marker",
    "supercalifragilisticexpialidocious" * 4,
    "a" * 120,
    "ab" * 75,
    "x" + "=" * 80 + "y",
    "\u00a0non-breaking\u2009thin\u3000ideographic spaces",
    "combining e\u0301 vs é, ligature ﬁ, fullwidth ＡＢＣ１２３",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "math ∑∫√∞ ≠ ≤ ≥ and arrows → ← ↔",
    "\U0001f9ff\U0001fae0 newer emoji and \ufffd replacement",
    "!!! ??? ... --- ''' \"\"\" ``` ~~~",
    "line1\n\n\n\nline5\n\n\n\n\n\n\n\n\n\n\n\nline17",
    "    indented 4\n        indented 8\n\t\t\tthree tabs",
    "control bytes \x04\x06\x13 \x04\u22e1 a\x1db and planes 4-11 \U00040000\U000a0001 end",
    "\x00nul\x7fdel\x1b[31mansi\x1b[0m",
]

PIECES = [
    "hello", "world", "The", " quick", "brown", "fox", "'s", "'ll", "n't", "I'm", "don't",
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000",
    "é", "ü", "ç", "ñ", "e\u0301", "Ä", "ß",
    "你", "好", "世界", "日本語", "の", "テキスト", "한국어",
    "👋", "🏽", "👨‍👩‍👧", "🎉", "❤️", "🇺🇸",
    "Привет", "мир", "مرحبا", "नमस्ते", "สวัสดี", "Ελληνικά",
    "0", "1", "42", "1234567", "3.14", "$", "€", "%",
    "(", ")", "[", "]", "{", "}", "<", ">", "/", "\\", "|", "_", "-", "=", "+", "*", "&", "^", "#", "@", "!", "?",
    ".", ",", ";", ":", "'", '"', "`", "~",
    "<0x41>", "▁", "▁▁", "<", "0x", "def ", "return", "    ", "<div>", "</li>",
    "a" * 30, "supercalifragilistic", "\ufffd", "\U0001f9ff",
]


def random_texts(specials: list[str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pool = PIECES + specials
    seps = ["", "", "", " ", " ", "  ", "\n", "\t", "\n\n"]
    out = []
    for _ in range(n):
        k = rng.randint(0, 12)
        out.append("".join(rng.choice(pool) + rng.choice(seps) for _ in range(k)))
    return out


class Vocab:
    def __init__(self, path: Path):
        L.llama_backend_init()
        params = L.llama_model_default_params()
        params.vocab_only = True
        self.model = L.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise SystemExit(f"llama.cpp could not load {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n = L.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def detokenize(self, ids: list[int], remove_special: bool, unparse_special: bool) -> bytes:
        arr = (L.llama_token * max(1, len(ids)))(*ids)
        cap = 64 + 16 * len(ids)
        out = ctypes.create_string_buffer(cap)
        n = L.llama_detokenize(self.vocab, arr, len(ids), out, cap, remove_special, unparse_special)
        if n < 0:
            cap = -n
            out = ctypes.create_string_buffer(cap)
            n = L.llama_detokenize(self.vocab, arr, len(ids), out, cap, remove_special, unparse_special)
        return out.raw[:n]

    def piece(self, tid: int, special: bool) -> bytes:
        out = ctypes.create_string_buffer(256)
        n = L.llama_token_to_piece(self.vocab, tid, out, 256, 0, special)
        if n < 0:
            out = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, tid, out, -n, 0, special)
        return out.raw[:n]

    def text(self, tid: int) -> str:
        return L.llama_vocab_get_text(self.vocab, tid).decode("utf-8", "replace")


def make(name: str, path: Path, n_random: int) -> dict:
    v = Vocab(path)
    attrs = [int(L.llama_vocab_get_attr(v.vocab, i)) for i in range(v.n)]
    normal = int(L.LLAMA_TOKEN_ATTR_NORMAL)
    special_mask = int(L.LLAMA_TOKEN_ATTR_CONTROL) | int(L.LLAMA_TOKEN_ATTR_USER_DEFINED)
    special_ids = [i for i, a in enumerate(attrs) if a & special_mask]
    rng = random.Random(7)
    specials_sample = [v.text(i) for i in special_ids[:40]]
    specials_sample += [v.text(i) for i in rng.sample(special_ids, min(40, len(special_ids)))]
    specials_sample = [s for s in specials_sample if "\n" not in s and "\t" not in s and s.strip()]

    flags = [(True, True), (True, False), (False, True), (False, False)]
    cases = []
    for origin, texts in (("curated", TEXTS), ("random", random_texts(specials_sample, n_random, seed=1234))):
        for text in texts:
            case = {"origin": origin, "text": text, "ids": {}}
            for add_special, parse_special in flags:
                case["ids"][f"{int(add_special)}{int(parse_special)}"] = v.tokenize(text, add_special, parse_special)
            cases.append(case)

    detok = []
    for text in TEXTS:
        ids = v.tokenize(text, True, True)
        detok.append({
            "ids": ids,
            "skip_special": v.detokenize(ids, True, False).hex(),
            "keep_special": v.detokenize(ids, False, True).hex(),
        })

    sample = sorted(set(rng.sample(range(v.n), min(1500, v.n)) + special_ids[:300]
                        + rng.sample(special_ids, min(300, len(special_ids)))))
    pieces = {str(i): [v.piece(i, False).hex(), v.piece(i, True).hex()] for i in sample}

    eog = [i for i in range(v.n) if L.llama_vocab_is_eog(v.vocab, i)]
    vocab = {
        "n_tokens": v.n,
        "bos": L.llama_vocab_bos(v.vocab),
        "eos": L.llama_vocab_eos(v.vocab),
        "eot": L.llama_vocab_eot(v.vocab),
        "add_bos": bool(L.llama_vocab_get_add_bos(v.vocab)),
        "add_eos": bool(L.llama_vocab_get_add_eos(v.vocab)),
        "eog": eog,
        "attrs": {str(i): a for i, a in enumerate(attrs) if a != normal},
    }
    L.llama_model_free(v.model)
    return {
        "model": MODELS[name],
        "llama_cpp_python": llama_cpp.__version__,
        "vocab": vocab,
        "cases": cases,
        "detok": detok,
        "pieces": pieces,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", default=os.environ.get("FORGE_TEST_MODELS_DIR", "/work/models"))
    ap.add_argument("--random", type=int, default=250, help="random texts per model")
    args = ap.parse_args()
    for name, filename in MODELS.items():
        path = Path(args.models_dir) / filename
        if not path.exists():
            print(f"skip {name}: {path} not found", file=sys.stderr)
            continue
        data = make(name, path, args.random)
        out = FIXTURES / f"tokenize_{name}.json"
        out.write_text(json.dumps(data, ensure_ascii=True, indent=None, separators=(",", ":")) + "\n")
        print(f"{out}: {len(data['cases'])} texts, {len(data['pieces'])} pieces")


if __name__ == "__main__":
    main()
