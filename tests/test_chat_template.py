"""Chat templates: the GGUF's jinja template in a sandbox, built-in fallbacks, one BOS per prompt."""
from __future__ import annotations

import datetime
import json

import pytest

from forge.errors import RequestError
from forge.tokenizer import ChatTemplateError, Tokenizer


def _byte_chars() -> list[str]:
    keep = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def gpt2_vocab(template: str | None, specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>")) -> Tokenizer:
    """Byte-level vocabulary without merges (one token per byte) plus control tokens."""
    tokens = list(specials) + _byte_chars()
    md = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3] * len(specials) + [1] * 256,
        "tokenizer.ggml.merges": [],
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": len(specials) - 1,
    }
    if template is not None:
        md["tokenizer.chat_template"] = template
    return Tokenizer.from_metadata(md)


def spm_vocab(arch: str = "gemma3", template: str | None = None) -> Tokenizer:
    """SentencePiece vocabulary: Gemma-style control tokens, byte tokens, ASCII characters."""
    ctrl = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    chars = ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]
    tokens = ctrl + [f"<0x{b:02X}>" for b in range(256)] + chars + ["\n"]
    types = [3] * len(ctrl) + [6] * 256 + [1] * len(chars) + [4]
    md = {
        "general.architecture": arch,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": [-float(i) for i in range(len(tokens))],
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.add_space_prefix": False,
    }
    if template is not None:
        md["tokenizer.chat_template"] = template
    return Tokenizer.from_metadata(md)


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": " Hi there \n"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]},
]


def test_file_template_renders():
    tok = gpt2_vocab(CHATML)
    out = tok.apply_chat_template(MESSAGES)
    assert out == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi there \n<|im_end|>\n"
                   "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                   "<|im_start|>assistant\n")
    assert not tok.apply_chat_template(MESSAGES[:2], add_generation_prompt=False).endswith("assistant\n")
    ids = tok.encode_chat(MESSAGES)
    assert ids == tok.encode(out, add_special=False, parse_special=True)
    assert ids.count(tok.token_to_id("<|im_start|>")) == 5 and ids[0] == tok.token_to_id("<|im_start|>")


def test_template_globals_and_filters():
    tmpl = ("{{ bos_token }}|{{ eos_token }}|{{ messages[0]['content'] | tojson }}|{{ {'b': 1, 'a': [2]} | tojson }}"
            "|{{ strftime_now('%Y') }}|{{ extra }}|{{ tools is none }}"
            "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}#{% endfor %}")
    tok = gpt2_vocab(tmpl)
    content = 'naïve "q"'
    out = tok.apply_chat_template([{"role": "user", "content": content}, {"role": "user", "content": "x"}], extra="E")
    year = datetime.datetime.now().strftime("%Y")
    quoted = json.dumps(content, ensure_ascii=False)
    assert out == f'<|endoftext|>|<|im_end|>|{quoted}|{{"b": 1, "a": [2]}}|{year}|E|True#'


def test_raise_exception_and_bad_templates():
    tok = gpt2_vocab("{% if messages[0]['role'] != 'user' %}{{ raise_exception('roles must start with user') }}{% endif %}ok")
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(ChatTemplateError, match="roles must start with user"):
        tok.apply_chat_template([{"role": "assistant", "content": "x"}])
    assert issubclass(ChatTemplateError, RequestError)
    with pytest.raises(ChatTemplateError, match="does not compile"):
        gpt2_vocab("{% for m in messages %}").apply_chat_template(MESSAGES)
    # the sandbox refuses attribute access to Python internals and mutation of arguments
    with pytest.raises(ChatTemplateError):
        gpt2_vocab("{{ messages.__class__.__mro__ }}").apply_chat_template(MESSAGES)
    with pytest.raises(ChatTemplateError):
        gpt2_vocab("{{ messages.append(1) }}").apply_chat_template(MESSAGES)


def test_bad_messages():
    tok = gpt2_vocab(CHATML)
    with pytest.raises(ValueError, match="messages"):
        tok.apply_chat_template("hello")
    with pytest.raises(ValueError, match="messages\\[1\\]"):
        tok.apply_chat_template([{"role": "user", "content": "a"}, {"content": "no role"}])
    with pytest.raises(ValueError, match="content"):
        tok.apply_chat_template([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}])
    assert tok.apply_chat_template([{"role": "user", "content": None}], add_generation_prompt=False) == \
        "<|im_start|>user\n<|im_end|>\n"


def test_gemma_fallback_template_and_single_bos():
    tok = spm_vocab("gemma3")
    assert tok.chat_template is None and tok.chat_family == "gemma"
    out = tok.apply_chat_template(MESSAGES)
    assert out == ("<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
                   "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n")
    ids = tok.encode_chat(MESSAGES)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert ids[1] == tok.token_to_id("<start_of_turn>")
    assert tok.decode(ids, skip_special=False) == out
    # encode() itself follows llama.cpp: add_special adds a BOS even when the text has one
    assert tok.encode(out, add_special=True)[:2] == [tok.bos_id, tok.bos_id]


def test_bos_added_when_template_omits_it():
    tok = spm_vocab("gemma3", template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    ids = tok.encode_chat([{"role": "user", "content": "hi"}])
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert tok.decode(ids) == "hi"


def test_chatml_fallback_for_other_vocabularies():
    tok = gpt2_vocab(None)
    assert tok.chat_family == "chatml"
    out = tok.apply_chat_template(MESSAGES[1:2])
    assert out == "<|im_start|>user\n Hi there \n<|im_end|>\n<|im_start|>assistant\n"
    assert not tok.add_bos and tok.encode_chat(MESSAGES[1:2])[0] == tok.token_to_id("<|im_start|>")
    llama3 = gpt2_vocab(None, specials=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
    assert llama3.chat_family == "llama3"
    assert llama3.apply_chat_template([{"role": "user", "content": "hi"}]) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


# ---------------------------------------------------------------------------------------------
# the real models
# ---------------------------------------------------------------------------------------------

def test_smollm2_template(model_path):
    tok = Tokenizer.from_gguf(model_path("smollm2-135m"))
    assert tok.chat_template is not None
    out = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert out == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                   "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode_chat([{"role": "user", "content": "hi"}])
    assert not tok.add_bos and ids[0] == tok.token_to_id("<|im_start|>")
    assert tok.token_to_id("<|im_end|>") in tok.eog_ids
    assert tok.decode(ids, skip_special=False) == out


def test_gemma3_has_no_template_and_gets_one_bos(model_path):
    tok = Tokenizer.from_gguf(model_path("gemma3-270m"))
    assert tok.chat_template is None and tok.chat_family == "gemma"
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    out = tok.apply_chat_template(msgs)
    assert out == "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    ids = tok.encode_chat(msgs)
    assert ids[:3] == [2, 105, 2364] and ids.count(2) == 1
    assert ids[-5:-2] == [106, 107, 105] and tok.decode(ids[-2:]) == "model\n"
    assert tok.decode(ids, skip_special=False) == out
    assert tok.token_to_id("<end_of_turn>") in tok.eog_ids
