"""GGUF vocabulary -> tokenizer that reproduces llama.cpp's token ids, plus chat templates.

The merge work is done by the `tokenizers` library; this module turns the GGUF vocabulary into a
`tokenizers` BPE model and reproduces the parts of llama.cpp's `llama-vocab.cpp` around it that
decide which ids come out:

* `tokenizer.ggml.model == "gpt2"`: byte-level BPE. The text is cut by the list of regexes that
  llama.cpp selects from `tokenizer.ggml.pre` (each regex splits the pieces of the previous one,
  matches and gaps both kept), bytes are mapped to the GPT-2 byte alphabet and merged by rank.
* `tokenizer.ggml.model == "llama"` (SentencePiece): spaces become U+2581 and the whole fragment is
  merged greedily, highest *score of the merged token* first, ties to the left. That is BPE whose
  merge list is every (a, b) with a, b and a+b in the vocabulary, ranked by the score of a+b; it is
  built once at load time. Characters that are not in the vocabulary fall back to <0xXX> tokens.
* Special tokens: control / user-defined / unknown tokens are cut out of the text before the
  merges, longest token text first, exactly as llama.cpp's `tokenizer_st_partition` does (control
  and unknown only when `parse_special`; user-defined always).
* BOS/EOS insertion, the end-of-generation set, token attributes and the detokenizer follow
  llama.cpp's rules for the same metadata.

The GGUF metadata comes from forge's own GGUF parser (`forge.loader.reader`), so a 262k-token
vocabulary parses in well under a second; vocab-only files work too.
"""
from __future__ import annotations

import codecs
import json
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from forge.errors import ModelFileError, RequestError

log = logging.getLogger("forge.tokenizer")

__all__ = [
    "Tokenizer", "IncrementalDecoder", "ChatTemplateError", "read_gguf_metadata",
    "PRE_TOKENIZER_REGEXES",
]


class ChatTemplateError(RequestError):
    """The chat template refused the messages (raise_exception) or could not be rendered."""


class _VocabError(ValueError):
    """Bad tokenizer metadata; `from_gguf` turns it into a ModelFileError naming the file."""


# ---------------------------------------------------------------------------------------------
# GGUF key/value reader
# ---------------------------------------------------------------------------------------------

def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata key/values of a GGUF file (v2/v3) without its tensor infos, through
    forge's GGUF parser (so vocab-only files work, and a 262k vocabulary parses in ~0.2 s)."""
    from forge.loader.reader import GGUFFile

    return GGUFFile(path, load_tensors=False).metadata


# ---------------------------------------------------------------------------------------------
# llama.cpp token attributes and pre-tokenizer table (facts from llama-vocab.cpp)
# ---------------------------------------------------------------------------------------------

# GGUF tokenizer.ggml.token_type values
TT_UNDEFINED, TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = range(7)

# llama_token_attr bits
A_UNKNOWN = 1 << 0
A_UNUSED = 1 << 1
A_NORMAL = 1 << 2
A_CONTROL = 1 << 3
A_USER_DEFINED = 1 << 4
A_BYTE = 1 << 5
A_LSTRIP = 1 << 7
A_RSTRIP = 1 << 8

_TYPE_TO_ATTR = {TT_UNKNOWN: A_UNKNOWN, TT_UNUSED: A_UNUSED, TT_NORMAL: A_NORMAL,
                 TT_CONTROL: A_CONTROL, TT_USER_DEFINED: A_USER_DEFINED, TT_BYTE: A_BYTE}

_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3_RE = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_CASED_WORDS = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+{c}"
                r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*{c}")
_DEEPSEEK_LLM_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-"
    "\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90"
    "-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d"
    "\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-"
    "\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4"
    "\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d"
    "\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4"
    "\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e"
    "\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f"
    "\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2"
    "\U000118a0-\U000118df\U0001e900-\U0001e943")

#: pre-tokenizer type -> the regexes llama.cpp applies in sequence (llm_tokenizer_bpe).
PRE_TOKENIZER_REGEXES: dict[str, list[str]] = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2_RE, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "llama3": [_LLAMA3_RE],
    "deepseek-llm": [r"[\r\n]", r"\s?[" + _DEEPSEEK_LLM_LETTERS + r"]+",
                     "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
                     r"\s+$", "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}+"],
    "deepseek-v3": [r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
                    "[!\"#$%&" + r"'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
                    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "deepseek-coder": [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}"],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2_RE, r"[0-9][0-9][0-9]"],
    "starcoder": [r"\p{N}", _GPT2_RE],
    "gpt2": [_GPT2_RE],
    "qwen2": [_QWEN2_RE],
    "qwen35": [_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "poro": [" ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"],
    "chatglm4": [_LLAMA3_RE],
    "viking": [" ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+", r"\p{N}"],
    "tekken": [_CASED_WORDS.replace("{c}", "") + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "gpt4o": [_CASED_WORDS.replace("{c}", _CONTRACTIONS + "?")
              + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "bailingmoe": [r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"],
    "seed-coder": [_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+"
                   r"|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "ufakzeka": [r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "exaone-moe": [_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+"],
    "minicpm5": [r"\p{N}{1,3}", _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "laguna": [r"[^\n]+|[\n]+", _QWEN2_RE],
    "jais2": [_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)"
              r"|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}"],
    "spark2_5": [r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
                 "[!\"#$%&" + r"'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
                 r"| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+", r"\p{N}"],
    "youtu": ["[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c"
              "\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
              r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS
              + r"?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS
              + r"?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "chameleon": [r"<sentinel:[0-9]+>", r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", r"([\t\n]|    |  )", r"\p{N}",
                  r"[\p{P}!-/:-@\[-`{-~]", _GPT2_RE],
    "granite-emb-multi": [_CASED_WORDS.replace("{c}", _CONTRACTIONS + "?").replace(r"(?=[\p{L}])", r"(?=[\p{L}\p{M}])")
                          + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
}


@dataclass(frozen=True)
class _PreSpec:
    regexes: str            # key into PRE_TOKENIZER_REGEXES
    clean_spaces: bool = True
    ignore_merges: bool = False
    add_bos: bool = False
    no_bos: bool = False     # llama.cpp clears the default BOS id for this pre-tokenizer


def _pre_table() -> dict[str, _PreSpec]:
    t: dict[str, _PreSpec] = {"default": _PreSpec("default")}
    for n in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
              "lfm2", "jina-v5-nano"):
        t[n] = _PreSpec("llama3", ignore_merges=True, add_bos=True)
    for n in ("dbrx", "smaug-bpe"):
        t[n] = _PreSpec("llama3")
    t["deepseek-llm"] = _PreSpec("deepseek-llm", clean_spaces=False)
    t["deepseek-coder"] = _PreSpec("deepseek-coder", clean_spaces=False)
    for n in ("deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"):
        t[n] = _PreSpec("deepseek-v3", clean_spaces=False)
    t["falcon"] = _PreSpec("falcon")
    for n in ("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"):
        t[n] = _PreSpec("starcoder")
    for n in ("smollm", "command-r"):
        t[n] = _PreSpec("starcoder", clean_spaces=False)
    for n in ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
              "a.x-4.0", "mellum", "modern-bert", "mpt", "olmo", "jais", "exaone4",
              "jina-v1-en", "jina-v2-code", "roberta-bpe"):
        t[n] = _PreSpec("gpt2")
    for n in ("trillion", "granite-docling"):
        t[n] = _PreSpec("gpt2", clean_spaces=False)
    for n in ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open", "grok-2"):
        t[n] = _PreSpec("qwen2", clean_spaces=False)
    for n in ("stablelm2", "megrez"):
        t[n] = _PreSpec("qwen2")
    t["qwen35"] = _PreSpec("qwen35", clean_spaces=False)
    t["poro-chat"] = _PreSpec("poro", clean_spaces=False)
    for n in ("bloom", "gpt3-finnish"):
        t[n] = _PreSpec("poro")
    t["chatglm-bpe"] = _PreSpec("chatglm4", no_bos=True)
    for n in ("glm4", "glm5"):
        t[n] = _PreSpec("chatglm4", ignore_merges=True, no_bos=True)
    t["viking"] = _PreSpec("viking", clean_spaces=False)
    t["tekken"] = _PreSpec("tekken", clean_spaces=False, ignore_merges=True, add_bos=True)
    for n in ("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"):
        t[n] = _PreSpec("gpt4o", clean_spaces=False)
    for n in ("bailingmoe", "bailingmoe2", "llada-moe"):
        t[n] = _PreSpec("bailingmoe", clean_spaces=False)
    t["seed-coder"] = _PreSpec("seed-coder", clean_spaces=False)
    t["ufakzeka"] = _PreSpec("ufakzeka", clean_spaces=False)
    t["exaone-moe"] = _PreSpec("exaone-moe")
    t["minicpm5"] = _PreSpec("minicpm5", ignore_merges=True)
    t["laguna"] = _PreSpec("laguna", clean_spaces=False)
    t["jais-2"] = _PreSpec("jais2")
    t["spark2_5"] = _PreSpec("spark2_5", clean_spaces=False)
    t["youtu"] = _PreSpec("youtu", clean_spaces=False, ignore_merges=True)
    t["chameleon"] = _PreSpec("chameleon", clean_spaces=False, add_bos=True)
    t["granite-embed-multi-97m"] = _PreSpec("granite-emb-multi", clean_spaces=False, ignore_merges=True)
    return t


_PRE_TABLE = _pre_table()

# Texts llama.cpp recognises (llama_vocab::impl::load). Order does not matter for the sets.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
              "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
              "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>",
              "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>",
              "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[")
_ALWAYS_USER_DEFINED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")

_SPACE = "\u2581"
_ISSPACE = " \t\n\v\f\r"  # C isspace() in the "C" locale


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the byte-level BPE alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


_BYTE_TO_CHAR = _bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


def _clean_up_spaces(text: str) -> str:
    """llama.cpp's `clean_spaces` detokenizer pass (three passes over the text, in order)."""
    text = re.sub(r" (?=[?!.,])", "", text)
    text = text.replace(" ' ", "'")
    return re.sub(r" (?='(?:[sm]|re|ve))", "", text)


# ---------------------------------------------------------------------------------------------
# all ways to write each token as the concatenation of two tokens (SentencePiece merge list)
# ---------------------------------------------------------------------------------------------

def _token_splits(tokens: list[str], allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (left id, right id, token id) with tokens[left] + tokens[right] == tokens[token id],
    left and right restricted to ids where `allowed` is True.

    A 262k vocabulary has ~1.8M split points. Looking each half up in a dict costs about a
    second of Python, so the halves are matched by polynomial hashes computed with NumPy, and
    every match is confirmed with a second, independent hash (equal texts always match; a false
    match would need both 64-bit hashes to collide). If two vocabulary entries share a hash the
    plain dictionary loop is used instead.
    """
    n = len(tokens)
    lens = np.fromiter(map(len, tokens), dtype=np.int64, count=n)
    flat = np.frombuffer("".join(tokens).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    starts = np.cumsum(lens) - lens
    ends = starts + lens
    n_split = np.maximum(lens - 1, 0)
    tok = np.repeat(np.arange(n, dtype=np.int64), n_split)
    k = np.arange(tok.shape[0], dtype=np.int64) - np.repeat(np.cumsum(n_split) - n_split, n_split) + 1
    s, e = starts[tok], ends[tok]
    mid = s + k
    h1 = _SubstringHash(flat, 0x9E3779B97F4A7C15)
    table = _HashTable(h1(starts, ends), allowed)
    if table.collides:
        return _token_splits_simple(tokens, allowed)
    a = table.find(h1(s, mid))
    keep = np.flatnonzero(a >= 0)
    a, tok, s, mid, e = a[keep], tok[keep], s[keep], mid[keep], e[keep]
    b = table.find(h1(mid, e))
    keep = b >= 0
    a, b, tok, s, mid, e = a[keep], b[keep], tok[keep], s[keep], mid[keep], e[keep]
    h2 = _SubstringHash(flat, 0xD6E8FEB86659FD93)
    th2 = h2(starts, ends)
    good = (th2[a] == h2(s, mid)) & (th2[b] == h2(mid, e))
    return a[good], b[good], tok[good]


def _token_splits_simple(tokens: list[str], allowed: np.ndarray):
    vocab = {t: i for i, t in enumerate(tokens) if allowed[i]}
    get = vocab.get
    out = []
    for tid, t in enumerate(tokens):
        for k in range(1, len(t)):
            a = get(t[:k])
            if a is not None:
                b = get(t[k:])
                if b is not None:
                    out.append((a, b, tid))
    arr = np.asarray(out, dtype=np.int64).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2]


class _SubstringHash:
    """hash(text[i:j]) = sum_q c_q * B^(j-1-q) mod 2^64 for any substring, from prefix sums."""

    def __init__(self, codes: np.ndarray, base: int):
        n = codes.shape[0]
        self.pw = self._powers(base, n)
        inv = self._powers(pow(base, -1, 1 << 64), n)
        self.g = np.zeros(n + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            np.cumsum(codes * inv[:n], dtype=np.uint64, out=self.g[1:])

    @staticmethod
    def _powers(base: int, n: int) -> np.ndarray:
        a = np.full(n + 1, base, dtype=np.uint64)
        a[0] = 1
        with np.errstate(over="ignore"):
            return np.cumprod(a, dtype=np.uint64)

    def __call__(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return self.pw[end - 1] * (self.g[end] - self.g[start])


class _HashTable:
    """Vectorised lookup of 64-bit hashes: bucketed by Fibonacci hashing, probed bucket-wide."""

    _MUL = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, hashes: np.ndarray, allowed: np.ndarray):
        ids = np.flatnonzero(allowed)
        h = hashes[ids]
        srt = np.sort(h)
        self.collides = bool(np.any(srt[1:] == srt[:-1]))
        bits = max(8, int(max(len(ids), 1) - 1).bit_length() + 2)
        self.shift = np.uint64(64 - bits)
        bucket = self._bucket(h)
        order = np.argsort(bucket, kind="stable")
        self.ids = ids[order]
        self.h = h[order]
        self.counts = np.bincount(bucket, minlength=1 << bits)
        self.first = np.cumsum(self.counts) - self.counts
        self.depth = int(self.counts.max(initial=0))

    def _bucket(self, h: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return ((h * self._MUL) >> self.shift).astype(np.int64)

    def find(self, x: np.ndarray) -> np.ndarray:
        """The id whose hash equals each x, or -1."""
        b = self._bucket(x)
        first, count = self.first[b], self.counts[b]
        out = np.full(x.shape, -1, dtype=np.int64)
        for j in range(self.depth):
            valid = count > j
            idx = np.where(valid, first + j, 0)
            hit = valid & (self.h[idx] == x)
            out[hit] = self.ids[idx[hit]]
        return out


# ---------------------------------------------------------------------------------------------
# chat templates
# ---------------------------------------------------------------------------------------------

_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set first_prefix = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set first_prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_prefix if loop.first else '')"
    " + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

_LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _raise_exception(message: str):
    raise ChatTemplateError(f"chat template error: {message}")


def _strftime_now(fmt: str) -> str:
    import datetime

    return datetime.datetime.now().strftime(fmt)


def _tojson(value, indent=None, separators=None, sort_keys=False, ensure_ascii=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


_JINJA_ENV = None


def _jinja_env():
    global _JINJA_ENV
    if _JINJA_ENV is None:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        _JINJA_ENV = env
    return _JINJA_ENV


def _content_text(content) -> str:
    """Message content as text: a string, None, or a list of OpenAI-style parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for p in content:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, Mapping) and p.get("type", "text") == "text":
                parts.append(str(p.get("text", "")))
            else:
                raise ValueError(f"messages: unsupported content part {p!r} (only text parts)")
        return "".join(parts)
    raise ValueError(f"messages: content must be a string or a list of text parts, got {type(content).__name__}")


# ---------------------------------------------------------------------------------------------
# the tokenizer
# ---------------------------------------------------------------------------------------------

def _meta_list(md: Mapping[str, Any], key: str) -> list | None:
    v = md.get(key)
    if v is None:
        return None
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return list(v)
    raise _VocabError(f"metadata key {key!r} must be an array, got {type(v).__name__}")


def _meta_int(md: Mapping[str, Any], key: str) -> int | None:
    v = md.get(key)
    if v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        raise _VocabError(f"metadata key {key!r} must be an integer, got {v!r}") from None


def _meta_bool(md: Mapping[str, Any], key: str) -> bool | None:
    v = md.get(key)
    return None if v is None else bool(v)


class Tokenizer:
    """A GGUF vocabulary as a tokenizer whose ids match llama.cpp's `llama_tokenize`.

    Main entry points: `from_gguf`, `from_metadata`, `encode`, `decode`, `stream`,
    `apply_chat_template`, `encode_chat`. Thread-safe for concurrent encode/decode.
    """

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load the tokenizer of a GGUF file (a full model or a vocab-only file)."""
        md = read_gguf_metadata(path)
        try:
            return cls(md)
        except _VocabError as e:
            raise ModelFileError(path, str(e)) from None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "Tokenizer":
        """Build from a GGUF metadata mapping (e.g. `GGUFFile(path).metadata`)."""
        if not isinstance(metadata, Mapping):
            raise ValueError(f"metadata must be a mapping, got {type(metadata).__name__}")
        return cls(metadata)

    def __init__(self, metadata: Mapping[str, Any]):
        md = metadata
        model = md.get("tokenizer.ggml.model")
        if model is None:
            raise _VocabError("missing metadata key 'tokenizer.ggml.model'")
        if model not in ("gpt2", "llama"):
            raise _VocabError(f"unsupported tokenizer model {model!r} (supported: 'gpt2' byte-level BPE, "
                              f"'llama' SentencePiece)")
        tokens = _meta_list(md, "tokenizer.ggml.tokens")
        if not tokens:
            raise _VocabError("missing or empty metadata key 'tokenizer.ggml.tokens'")
        n = len(tokens)
        if not isinstance(tokens[0], str):
            raise _VocabError("'tokenizer.ggml.tokens' must be an array of strings")
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]  # as llama.cpp
        scores = md.get("tokenizer.ggml.scores")
        if scores is not None:
            scores = np.asarray(scores, dtype=np.float32)
            if scores.shape[0] < n:
                raise _VocabError(f"'tokenizer.ggml.scores' has {scores.shape[0]} entries for {n} tokens")
            scores = scores[:n]
        types = md.get("tokenizer.ggml.token_type")
        if types is not None:
            types = np.asarray(types, dtype=np.int64)
            if types.shape[0] < n:
                raise _VocabError(f"'tokenizer.ggml.token_type' has {types.shape[0]} entries for {n} tokens")
            types = types[:n]

        self.model: str = model
        self.tokens: list[str] = tokens
        self.vocab_size: int = n
        self._vocab: dict[str, int] = {t: i for i, t in enumerate(tokens)}
        if len(self._vocab) != n:
            raise _VocabError("'tokenizer.ggml.tokens' contains duplicate tokens")
        self.arch: str | None = md.get("general.architecture")
        self.name: str | None = md.get("general.name")

        # attributes from token types
        attrs = np.full(n, A_NORMAL, dtype=np.int32)
        if types is not None:
            lut = np.zeros(max(7, int(types.max(initial=0)) + 1), dtype=np.int32)
            for tt, a in _TYPE_TO_ATTR.items():
                lut[tt] = a
            attrs = np.where((types >= 0) & (types < lut.shape[0]), lut[np.clip(types, 0, lut.shape[0] - 1)], 0)
            attrs = attrs.astype(np.int32)

        # flags and default special ids per model type (llama_vocab::impl::load)
        pre = md.get("tokenizer.ggml.pre")
        self.pre: str | None = pre
        ids = {"bos": None, "eos": None, "unk": None, "sep": None, "pad": None, "mask": None}
        if model == "llama":
            ids.update(bos=1, eos=2, unk=0)
            self.add_space_prefix = True
            self.clean_spaces = False
            self.add_bos, self.add_eos = True, False
            ignore_merges = False
            self.pre_regexes: list[str] = []
        else:
            ids.update(bos=11, eos=11)
            self.add_space_prefix = False
            self.add_bos, self.add_eos = False, False
            if not pre:
                log.warning("GGUF has no 'tokenizer.ggml.pre'; using llama.cpp's 'default' pre-tokenizer")
                spec = _PRE_TABLE["default"]
            elif pre in _PRE_TABLE:
                spec = _PRE_TABLE[pre]
            else:
                log.warning("unknown pre-tokenizer %r; falling back to the GPT-2 pre-tokenizer "
                            "(token ids may differ from llama.cpp)", pre)
                spec = _PreSpec("gpt2")
            self.clean_spaces = spec.clean_spaces
            ignore_merges = spec.ignore_merges
            if spec.add_bos:
                self.add_bos = True
            if spec.no_bos:
                ids["bos"] = None
            self.pre_regexes = list(PRE_TOKENIZER_REGEXES[spec.regexes])
        v = _meta_bool(md, "tokenizer.ggml.add_space_prefix")
        if v is not None:
            self.add_space_prefix = v

        self._has_placeholders = False
        self._hf = self._build_hf(model, tokens, scores, attrs, ignore_merges, md)

        # special ids: defaults (dropped when out of range), then metadata keys
        other = {k: None for k in ("eot", "eom", "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep")}
        ids.update(other)
        for k in list(ids):
            if ids[k] is not None and not 0 <= ids[k] < n:
                ids[k] = None
        keyed = [("bos", "bos_token_id"), ("eos", "eos_token_id"), ("eot", "eot_token_id"),
                 ("eom", "eom_token_id"), ("unk", "unknown_token_id"), ("sep", "seperator_token_id"),
                 ("pad", "padding_token_id"), ("mask", "mask_token_id"),
                 ("fim_pre", "fim_pre_token_id"), ("fim_suf", "fim_suf_token_id"),
                 ("fim_mid", "fim_mid_token_id"), ("fim_pad", "fim_pad_token_id"),
                 ("fim_rep", "fim_rep_token_id"), ("fim_sep", "fim_sep_token_id"),
                 ("fim_pre", "prefix_token_id"), ("fim_suf", "suffix_token_id"), ("fim_mid", "middle_token_id")]
        for name, key in keyed:
            val = _meta_int(md, "tokenizer.ggml." + key)
            if val is None:
                continue
            if 0 <= val < n:
                ids[name] = val
            else:
                log.warning("bad special token %s = %d (vocab size %d); keeping the default", key, val, n)
        v = _meta_bool(md, "tokenizer.ggml.add_bos_token")
        if v is not None:
            self.add_bos = v
        v = _meta_bool(md, "tokenizer.ggml.add_eos_token")
        if v is not None:
            self.add_eos = v

        # auto-detected tokens by text; they become control tokens
        vocab = self._vocab

        def detect(texts: Iterable[str]) -> int | None:
            found = [vocab[t] for t in texts if t in vocab]
            return min(found) if found else None

        for name, texts in (("eot", _EOT_TEXTS), ("eom", _EOM_TEXTS), *_FIM_TEXTS.items()):
            if ids[name] is None:
                tid = detect(texts)
                if tid is not None:
                    ids[name] = tid
                    attrs[tid] |= A_CONTROL
        # control tokens named "unused" are unused
        for i in np.nonzero(attrs & A_CONTROL)[0].tolist():
            if "unused" in tokens[i]:
                attrs[i] |= A_UNUSED
        eog: set[int] = set()
        for name in ("fim_pad", "fim_rep", "fim_sep"):
            if ids[name] is not None:
                eog.add(ids[name])
        for t in _EOG_TEXTS:
            tid = vocab.get(t)
            if tid is not None:
                eog.add(tid)
                attrs[tid] |= A_CONTROL
        for t in _ALWAYS_USER_DEFINED:
            tid = vocab.get(t)
            if tid is not None:
                attrs[tid] = A_USER_DEFINED
        for name in ("eos", "eot", "eom"):
            if ids[name] is not None:
                eog.add(ids[name])
        texts_in_eog = {tokens[i]: i for i in eog}
        if "<|end|>" in texts_in_eog and (("<|return|>" in texts_in_eog and "<|call|>" in texts_in_eog)
                                          or ("<|calls|>" in texts_in_eog and "<|flush|>" in texts_in_eog)):
            end_id = texts_in_eog["<|end|>"]
            eog.discard(end_id)
            attrs[end_id] = A_USER_DEFINED
        if "</s>" in texts_in_eog and ("<|tool_response>" in texts_in_eog or "<|plamo:eos|>" in texts_in_eog):
            s_id = texts_in_eog["</s>"]
            eog.discard(s_id)
            attrs[s_id] = A_NORMAL

        # special tokens that are cut out of the text before merging, longest first
        special = np.nonzero(attrs & (A_CONTROL | A_USER_DEFINED | A_UNKNOWN))[0].tolist()
        special.sort(key=lambda i: -len(tokens[i].encode("utf-8")))
        # per-model strip attributes (llama.cpp sets them after building the cache)
        lname = (self.name or "").lower()
        if any(s in (pre or "") for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")):
            if "<mask>" in vocab:
                attrs[vocab["<mask>"]] |= A_LSTRIP
        elif "phi-3" in lname or "phi3" in lname:
            for i in special:
                attrs[i] |= A_RSTRIP
            if "</s>" in vocab:
                attrs[vocab["</s>"]] |= A_RSTRIP
            for t in ("<unk>", "<s>", "<|endoftext|>"):
                if t in vocab:
                    attrs[vocab[t]] &= ~A_RSTRIP
        elif "modern-bert" in lname and "[MASK]" in vocab:
            attrs[vocab["[MASK]"]] |= A_LSTRIP

        self._attrs = attrs
        # index: a key prefix -> the special tokens with that prefix, for a fast "which specials
        # occur in this text" check. Order inside each group follows `special`.
        groups: dict[str, list[int]] = defaultdict(list)
        for i in special:
            groups[tokens[i][:7]].append(i)
        self._special_groups = dict(groups)
        self._special_rank = {tid: r for r, tid in enumerate(special)}

        self.bos_id: int | None = ids["bos"]
        self.eos_id: int | None = ids["eos"]
        self.eot_id: int | None = ids["eot"]
        self.eom_id: int | None = ids["eom"]
        self.unk_id: int | None = ids["unk"]
        self.pad_id: int | None = ids["pad"]
        self.sep_id: int | None = ids["sep"]
        self.mask_id: int | None = ids["mask"]
        self.fim_ids: dict[str, int | None] = {k: ids[k] for k in _FIM_TEXTS}
        self.eog_ids: frozenset[int] = frozenset(eog)
        if self.add_bos and self.bos_id is None:
            raise _VocabError("the tokenizer adds BOS but has no BOS token")
        if self.add_eos and self.eos_id is None:
            raise _VocabError("the tokenizer adds EOS but has no EOS token")

        tmpl = md.get("tokenizer.chat_template")
        self.chat_template: str | None = tmpl if isinstance(tmpl, str) and tmpl.strip() else None
        self._compiled_template = None
        self._piece_cache: list[bytes | None] = [None] * n

    # -- the tokenizers model ----------------------------------------------------------------
    def _build_hf(self, model, tokens, scores, attrs, ignore_merges, md):
        from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers

        vocab = self._vocab
        if model == "gpt2":
            raw = _meta_list(md, "tokenizer.ggml.merges")
            if raw is None:
                raise _VocabError("missing metadata key 'tokenizer.ggml.merges' (needed for a gpt2 tokenizer)")
            # Byte characters missing from the vocabulary get ids past its end: like llama.cpp's
            # symbols they sit between their neighbours and block merges, and `encode` drops them
            # afterwards, as llama.cpp drops bytes it has no token for. (`tokenizers` would
            # silently skip them and merge across the gap.)
            hf_vocab = vocab
            missing = [c for c in _BYTE_TO_CHAR.values() if c not in vocab]
            if missing:
                hf_vocab = dict(vocab)
                for k, c in enumerate(missing):
                    hf_vocab[c] = len(tokens) + k
                self._has_placeholders = True
            merges, seen, dropped = [], set(), 0
            for m in raw:
                pos = m.find(" ", 1)
                if pos < 0:
                    dropped += 1
                    continue
                a, b = m[:pos], m[pos + 1:]
                if (a, b) in seen:
                    continue  # llama.cpp keeps the first rank of a duplicated merge
                seen.add((a, b))
                if a not in hf_vocab or b not in hf_vocab or a + b not in vocab:
                    dropped += 1
                    continue
                merges.append((a, b))
            if dropped:
                log.warning("%d of %d merges are malformed or produce tokens outside the vocabulary; ignored",
                            dropped, len(raw))
            bpe = models.BPE(vocab=hf_vocab, merges=merges, ignore_merges=bool(ignore_merges), fuse_unk=False)
            hf = HFTokenizer(bpe)
            try:
                splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in self.pre_regexes]
            except Exception as e:  # noqa: BLE001 - an unsupported regex is a bug in the table
                raise RuntimeError(f"pre-tokenizer regex for {self.pre!r} does not compile: {e}") from e
            hf.pre_tokenizer = pre_tokenizers.Sequence(
                splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
            return hf

        # SentencePiece: every split of a token into two tokens is a merge, ranked by the score
        # of the merged token (higher first). Byte tokens never take part as halves: llama.cpp
        # only falls back to bytes after merging.
        if scores is None:
            scores = np.zeros(len(tokens), dtype=np.float32)
        halves = (attrs & A_BYTE) == 0
        left, right, res = _token_splits(tokens, halves)
        # rank = score of the merged token, higher first; `_token_splits` lists the pairs by
        # merged id then split point, and the stable sort keeps that order for equal scores
        order = np.argsort(-scores[res].astype(np.float64), kind="stable")
        text = np.array(tokens, dtype=object)
        merges = list(zip(text[left[order]].tolist(), text[right[order]].tolist()))
        unk = None  # with all 256 <0xXX> tokens present, byte fallback never needs <unk>
        if any(f"<0x{b:02X}>" not in vocab for b in range(256)):
            u = _meta_int(md, "tokenizer.ggml.unknown_token_id")
            u = 0 if u is None else u
            if 0 <= u < len(tokens):
                unk = tokens[u]
        bpe = models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token=unk, fuse_unk=False)
        return HFTokenizer(bpe)

    # -- encoding ------------------------------------------------------------------------------
    def _partition(self, text: str, parse_special: bool) -> list:
        """llama.cpp's tokenizer_st_partition: a list of str (raw text) and int (token id)."""
        tokens = self.tokens
        cands = []
        for key, members in self._special_groups.items():
            if key in text:
                for tid in members:
                    if tokens[tid] in text:
                        cands.append(tid)
        if not cands:
            return [text]
        cands.sort(key=self._special_rank.__getitem__)
        frags: list = [text]
        attrs = self._attrs
        for tid in cands:
            a = int(attrs[tid])
            if not parse_special and a & (A_CONTROL | A_UNKNOWN):
                continue
            tok = tokens[tid]
            lstrip, rstrip = a & A_LSTRIP, a & A_RSTRIP
            out: list = []
            for frag in frags:
                if not isinstance(frag, str) or tok not in frag:
                    out.append(frag)
                    continue
                start = 0
                while True:
                    pos = frag.find(tok, start)
                    if pos < 0:
                        if start < len(frag):
                            out.append(frag[start:])
                        break
                    left = frag[start:pos]
                    if lstrip:
                        left = left.rstrip(_ISSPACE)
                    if left:
                        out.append(left)
                    out.append(tid)
                    start = pos + len(tok)
                    if rstrip:
                        while start < len(frag) and frag[start] in _ISSPACE:
                            start += 1
            frags = out
        return frags

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`, as llama.cpp's `llama_tokenize(text, add_special, parse_special)`.

        add_special: add BOS/EOS where the model asks for them (`add_bos_token`/`add_eos_token`).
        parse_special: control tokens written in the text (e.g. "<|im_start|>") become single
        tokens; user-defined tokens always do.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        out: list[int] = []
        frags = self._partition(text, parse_special) if text else []
        hf_encode = self._hf.encode
        if self.model == "llama":
            if add_special and self.add_bos:
                out.append(self.bos_id)
            prev_special = True
            for frag in frags:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                    continue
                if self.add_space_prefix and prev_special:
                    frag = " " + frag
                out.extend(hf_encode(frag.replace(" ", _SPACE), add_special_tokens=False).ids)
                prev_special = False
        else:
            if add_special and self.add_bos:
                out.append(self.bos_id)
            n = self.vocab_size
            for frag in frags:
                if isinstance(frag, int):
                    out.append(frag)
                elif self._has_placeholders:
                    out.extend(i for i in hf_encode(frag, add_special_tokens=False).ids if i < n)
                else:
                    out.extend(hf_encode(frag, add_special_tokens=False).ids)
        if add_special and self.add_eos:
            out.append(self.eos_id)
        return out

    def __call__(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self.encode(text, add_special, parse_special)

    # -- decoding ------------------------------------------------------------------------------
    def _check_id(self, tid) -> int:
        try:
            t = int(tid)
        except (TypeError, ValueError):
            raise ValueError(f"ids: token id {tid!r} is not an integer") from None
        if not 0 <= t < self.vocab_size:
            raise ValueError(f"ids: token id {t} is out of range [0, {self.vocab_size})")
        return t

    def piece_bytes(self, token_id: int, special: bool = True) -> bytes:
        """The bytes token `token_id` stands for (llama.cpp `token_to_piece`, no lstrip).

        special=False renders control and unknown tokens as b"" (user-defined ones always show).
        """
        tid = self._check_id(token_id)
        a = int(self._attrs[tid])
        if a & (A_UNKNOWN | A_CONTROL):
            return self.tokens[tid].encode("utf-8") if special else b""
        p = self._piece_cache[tid]
        if p is None:
            p = self._compute_piece(tid, a)
            self._piece_cache[tid] = p
        return p

    def _compute_piece(self, tid: int, a: int) -> bytes:
        text = self.tokens[tid]
        if a & A_USER_DEFINED:
            return text.encode("utf-8")
        if a & A_NORMAL:
            if self.model == "llama":
                return text.replace(_SPACE, " ").encode("utf-8")
            out = bytearray()
            for ch in text:
                b = _CHAR_TO_BYTE.get(ch)
                if b is None:  # llama_decode_text's marker for a character outside the byte map
                    out += b"[UNK_BYTE_0x" + ch.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
                else:
                    out.append(b)
            return bytes(out)
        if a & A_BYTE:
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                return b"\x00"
        return b""

    def id_to_piece(self, token_id: int, special: bool = True) -> str:
        """The text of one token as the detokenizer renders it (invalid UTF-8 replaced)."""
        return self.piece_bytes(token_id, special).decode("utf-8", "replace")

    def id_to_token(self, token_id: int) -> str:
        """The raw vocabulary string of a token (e.g. 'Ġhello', '▁hello', '<0x0A>')."""
        return self.tokens[self._check_id(token_id)]

    def token_to_id(self, token: str) -> int | None:
        """The id of a raw vocabulary string, or None."""
        return self._vocab.get(token)

    def token_attr(self, token_id: int) -> int:
        """llama.cpp's attribute bits of a token (llama_token_attr: NORMAL=4, CONTROL=8, ...)."""
        return int(self._attrs[self._check_id(token_id)])

    def _decode_bytes(self, ids: Sequence[int], skip_special: bool) -> bytes:
        ids = [self._check_id(t) for t in ids]
        remove_space = self.add_space_prefix
        if skip_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if skip_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        out = bytearray()
        for tid in ids:
            p = self.piece_bytes(tid, not skip_special)
            if remove_space and p[:1] == b" ":
                p = p[1:]
            remove_space = False
            out += p
        return bytes(out)

    def decode(self, ids: Sequence[int], skip_special: bool = True, clean_spaces: bool = False) -> str:
        """Text of `ids`, as llama.cpp's `llama_detokenize(remove_special=skip_special,
        unparse_special=not skip_special)`.

        clean_spaces=True also applies llama.cpp's clean-up (" ." -> "." etc.) when the model's
        tokenizer asks for it (`self.clean_spaces`); it is off by default so that `decode` and the
        streaming decoder (`stream`) give the same text, as llama.cpp's server does.
        """
        text = self._decode_bytes(ids, skip_special).decode("utf-8", "replace")
        if clean_spaces and self.clean_spaces:
            text = _clean_up_spaces(text)
        return text

    def stream(self, skip_special: bool = True) -> "IncrementalDecoder":
        """A streaming detokenizer: feed ids one at a time, get text pieces."""
        return IncrementalDecoder(self, skip_special=skip_special)

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.eog_ids

    # -- chat ----------------------------------------------------------------------------------
    @property
    def chat_family(self) -> str:
        """Which built-in template applies when the file has none: 'gemma', 'llama3' or 'chatml'."""
        if "<start_of_turn>" in self._vocab or (self.arch or "").startswith("gemma"):
            return "gemma"
        if "<|start_header_id|>" in self._vocab:
            return "llama3"
        return "chatml"

    def _template(self):
        if self._compiled_template is None:
            src = self.chat_template
            if src is None:
                src = {"gemma": _GEMMA_TEMPLATE, "llama3": _LLAMA3_TEMPLATE}.get(self.chat_family, _CHATML_TEMPLATE)
            try:
                self._compiled_template = _jinja_env().from_string(src)
            except Exception as e:  # noqa: BLE001 - jinja syntax errors come in several types
                raise ChatTemplateError(f"the model's chat template does not compile: {e}") from None
        return self._compiled_template

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                            **kwargs: Any) -> str:
        """Render `messages` ([{"role": ..., "content": ...}, ...]) with the GGUF's chat template
        (or the built-in one for the model family when the file has none)."""
        if not isinstance(messages, (list, tuple)):
            raise ValueError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
        msgs = []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
                raise ValueError(f"messages[{i}] must be a dict with a string 'role'")
            m = dict(m)
            # text parts become one string: every template handles string content, not all
            # handle part lists (forge serves text only)
            m["content"] = _content_text(m.get("content"))
            msgs.append(m)
        ctx = dict(kwargs)
        ctx.update(messages=msgs, add_generation_prompt=bool(add_generation_prompt),
                   bos_token=self.tokens[self.bos_id] if self.bos_id is not None else "",
                   eos_token=self.tokens[self.eos_id] if self.eos_id is not None else "")
        ctx.setdefault("tools", None)
        tmpl = self._template()
        try:
            return tmpl.render(**ctx)
        except ChatTemplateError:
            raise
        except Exception as e:  # noqa: BLE001 - template runtime errors (undefined, type errors, sandbox)
            raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from None

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                    **kwargs: Any) -> list[int]:
        """Token ids of the rendered chat, with exactly one BOS where the model uses one.

        Control tokens in the rendered text are parsed; BOS is added only if the template did not
        already write it; EOS is never appended (the model is meant to continue).
        """
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        ids = self.encode(text, add_special=False, parse_special=True)
        if self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def __repr__(self) -> str:
        return (f"Tokenizer(model={self.model!r}, pre={self.pre!r}, vocab_size={self.vocab_size}, "
                f"bos={self.bos_id}, eos={self.eos_id}, eog={sorted(self.eog_ids)})")


class IncrementalDecoder:
    """Streaming detokenizer. `add(id)` returns the new text (possibly ""), never splitting a UTF-8
    character: bytes of an incomplete character are held until the rest arrives. `flush()` returns
    what is left (an incomplete tail becomes U+FFFD). The concatenation of all returned pieces equals
    `tokenizer.decode(all_ids, skip_special)`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self._tok = tokenizer
        self._skip = bool(skip_special)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._count = 0
        self._remove_space = tokenizer.add_space_prefix
        self._held_eos = False  # a trailing EOS that decode() would drop, held until more comes

    def add(self, token_id: int) -> str:
        tok = self._tok
        tid = tok._check_id(token_id)
        first = self._count == 0
        self._count += 1
        if first and self._skip and tok.add_bos and tid == tok.bos_id:
            self._remove_space = False
            return ""
        data = b""
        if self._held_eos:
            self._held_eos = False
            data += self._piece(tok.eos_id)
        if self._skip and tok.add_eos and tid == tok.eos_id:
            self._held_eos = True
            return self._utf8.decode(data) if data else ""
        data += self._piece(tid)
        return self._utf8.decode(data) if data else ""

    def _piece(self, tid: int) -> bytes:
        p = self._tok.piece_bytes(tid, not self._skip)
        if self._remove_space and p[:1] == b" ":
            p = p[1:]
        self._remove_space = False
        return p

    def add_many(self, ids: Iterable[int]) -> str:
        return "".join(self.add(t) for t in ids)

    def flush(self) -> str:
        self._held_eos = False
        return self._utf8.decode(b"", final=True)
