"""The `forge` command: one clear line and exit code 1 on bad input; generate/info/bench work."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forge.testing.synthetic import write_synthetic

ROOT = Path(__file__).resolve().parent.parent


def forge(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "forge.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 1, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    p = tmp_path_factory.mktemp("cli") / "tiny.gguf"
    write_synthetic(p, "tiny-llama", "Q8_0", seed=5)
    return p


def test_not_gguf(tmp_path):
    p = tmp_path / "notes.gguf"
    p.write_text("hello, not a model")
    assert_one_line_error(forge("info", str(p)), str(p), "not a GGUF file")
    assert_one_line_error(forge("generate", "hi", "-m", str(p)), str(p), "not a GGUF file")


def test_truncated(tiny, tmp_path):
    data = tiny.read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[: len(data) * 2 // 3])
    assert_one_line_error(forge("generate", "hi", "-m", str(p)), str(p), "truncated")


def test_unknown_architecture(tmp_path):
    import gguf
    import numpy as np

    p = tmp_path / "weird.gguf"
    w = gguf.GGUFWriter(str(p), "weirdarch")
    w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert_one_line_error(forge("generate", "hi", "-m", str(p)), str(p), "unknown architecture", "weirdarch")


def test_missing_tensor(tiny, tmp_path):
    import gguf

    r = gguf.GGUFReader(str(tiny))
    p = tmp_path / "missing.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_array(k, f.contents())
        else:
            w.add_key_value(k, f.contents(), vt)
    for t in r.tensors:
        if t.name == "blk.1.ffn_up.weight":
            continue
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert_one_line_error(forge("generate", "hi", "-m", str(p)), str(p), "missing tensor", "blk.1.ffn_up.weight")


def test_prompt_longer_than_context(tiny):
    res = forge("generate", "word " * 200, "-m", str(tiny), "--ctx", "64", "--device", "cpu")
    assert_one_line_error(res, "context")


def test_no_such_file():
    assert_one_line_error(forge("info", "/nonexistent/model.gguf"), "/nonexistent/model.gguf")


def test_generate_and_info(tiny):
    res = forge("generate", "hello", "-m", str(tiny), "-n", "5", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    res = forge("info", str(tiny))
    assert res.returncode == 0, res.stderr
    assert "architecture  llama" in res.stdout and "KV cache per token" in res.stdout


def test_bench_json(tiny, tmp_path):
    out = tmp_path / "b.json"
    res = forge("bench", str(tiny), "-p", "32", "-n", "8", "-r", "2", "--device", "cpu", "--json", str(out))
    assert res.returncode == 0, res.stderr
    assert "pp32" in res.stdout and "tg8" in res.stdout
    data = json.loads(out.read_text())
    assert len(data["pp_tps"]) == 2 and all(x > 0 for x in data["tg_tps"])


def test_bench_depth(tiny, tmp_path):
    """-d D: pp runs after D context tokens served by the prefix cache (every full block of
    them), tg after a D-token prompt; the rows say so."""
    out = tmp_path / "d.json"
    res = forge("bench", str(tiny), "-p", "16", "-n", "4", "-r", "2", "-d", "40", "--device", "cpu",
                "--json", str(out))
    assert res.returncode == 0, res.stderr
    assert "pp16 @ d40" in res.stdout and "tg4 @ d40" in res.stdout
    data = json.loads(out.read_text())
    assert data["depth"] == 40 and data["pp_cached_tokens"] == [32, 32]
    assert data["tg_prompt_tokens"] == 40 and data["tg_tokens_timed"] == [4, 4]
    assert all(x > 0 for x in data["pp_tps"] + data["tg_tps"])
    plain = tmp_path / "p.json"
    assert forge("bench", str(tiny), "-p", "16", "-n", "4", "-r", "1", "--device", "cpu",
                 "--json", str(plain)).returncode == 0
    data = json.loads(plain.read_text())
    assert data["pp_cached_tokens"] == [0] and data["tg_prompt_tokens"] == 1
    # two 300-token prompts take two prefill steps of at most 512 tokens: the first sequence
    # samples its second token before the second has its first, and that one is not counted
    two = tmp_path / "b2.json"
    res = forge("bench", str(tiny), "-p", "16", "-n", "4", "-r", "1", "-b", "2", "-d", "300",
                "--device", "cpu", "--json", str(two))
    assert res.returncode == 0, res.stderr
    assert 0 < json.loads(two.read_text())["tg_tokens_timed"][0] < 2 * 4
    assert_one_line_error(forge("bench", str(tiny), "-d", "-1", "--device", "cpu"), "-d >= 0")
    assert_one_line_error(forge("bench", str(tiny), "-d", "100", "--kv-tokens", "64",
                                "--device", "cpu"), "--kv-tokens")
    assert_one_line_error(forge("bench", str(tiny), "-d", "100000", "--device", "cpu"), "context")


def test_bad_sampling_flag(tiny):
    assert_one_line_error(forge("generate", "hi", "-m", str(tiny), "--top-p", "2"), "top_p")
