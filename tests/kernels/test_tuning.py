"""forge.kernels.tuning: buckets, table lookup order, nearest-bucket choice, key filtering, and
the shipped tables' schema and provenance; autotune's GPU-free parts (spaces, sweep scoring,
seeding, current entries). CPU only, no Triton compile, except one GPU-marked sweep test."""
from __future__ import annotations

import json
import math

import pytest

from forge.kernels import tuning
from forge.runtime import device


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    monkeypatch.delenv("FORGE_TUNING_TABLE", raising=False)
    monkeypatch.delenv("FORGE_ARCH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no real ~/.cache/forge tables
    tuning.clear_cache()
    yield
    tuning.clear_cache()


def _write(path, doc):
    path.write_text(json.dumps(doc))
    return path


# ---------------------------------------------------------------------------------------------
# buckets


def test_bucket_rounds_up_and_sorts():
    assert tuning.bucket(N=16000, K=4096) == "K4096_N16384"
    assert tuning.bucket(K=4097, N=1) == "K8192_N1"
    assert tuning.bucket(T=0) == "T1"
    assert tuning.bucket(T=3, head_dim=80) == "T4_head_dim128"
    # numpy-style ints are accepted
    np = pytest.importorskip("numpy")
    assert tuning.bucket(N=np.int64(33)) == "N64"


@pytest.mark.parametrize("v", [-1, 2.5, "8", True, None])
def test_bucket_rejects_bad_values(v):
    with pytest.raises(ValueError, match="N"):
        tuning.bucket(N=v)


def test_bucket_rejects_bad_names_and_empty():
    with pytest.raises(ValueError, match="dims"):
        tuning.bucket()
    with pytest.raises(ValueError, match="dims"):
        tuning.bucket(**{"N2": 4})
    with pytest.raises(ValueError, match="dims"):
        tuning.bucket(**{"N_": 4})


def test_parse_bucket_round_trip():
    for dims in [{"K": 4096, "N": 16384}, {"head_dim": 128, "T": 64}, {"a_b_c": 2, "Z": 1}]:
        b = tuning.bucket(**dims)
        assert tuning.parse_bucket(b) == {k: tuning._pow2_ceil(v) for k, v in dims.items()}
    for bad in ["", "K", "4096", "K4096__N2", "K4096N", "k-4"]:
        with pytest.raises(ValueError, match="bucket"):
            tuning.parse_bucket(bad)


def test_match_distance_of_entries_naming_the_same_dims():
    d = tuning.match_distance({"K": 1024, "N": 4096}, {"K": 4096, "N": 1024})
    assert d == pytest.approx(4.0)
    assert tuning.match_distance({"K": 8}, {"K": 8}) == 0
    assert tuning.match_distance({"K": 8}, {"N": 8}) == math.inf


def test_match_distance_counts_the_entry_dims_only():
    want = {"d": 256, "g": 4, "t": 8192}
    assert tuning.match_distance(want, {"d": 256, "g": 4, "t": 2048}) == pytest.approx(2.0)
    assert tuning.match_distance(want, {"d": 128, "g": 4}) == pytest.approx(1.0)  # t: any
    assert tuning.match_distance(want, {"d": 256, "g": 4, "s": 8}) == math.inf  # s: not asked
    assert tuning.match_distance({"d": 256}, {"d": 256, "g": 4}) == math.inf


# ---------------------------------------------------------------------------------------------
# lookup order


@pytest.fixture
def tables(tmp_path, monkeypatch):
    cfg = tmp_path / "configs"
    cfg.mkdir()
    _write(cfg / "gfx1100.json", {
        "arch": "gfx1100", "family": "rdna3", "source": "test",
        "kernels": {"k": {"*": {"BLOCK": 16, "num_warps": 2, "source": "reasoned: rdna3 file"}}}})
    _write(cfg / "gfx942.json", {
        "arch": "gfx942", "family": "cdna3", "source": "test",
        "kernels": {"k": {"*": {"BLOCK": 64, "num_warps": 8, "waves_per_eu": 2, "kpack": 2,
                                "matrix_instr_nonkdim": 16, "source": "reasoned: cdna3"}}}})
    _write(cfg / "default.json", {
        "arch": None, "family": None, "source": "test",
        "families": {"ampere": {"kernels": {"k": {"*": {"BLOCK": 128, "source": "reasoned: ampere"}}}}},
        "vendors": {"amd": {"kernels": {"k": {"*": {"BLOCK": 256, "source": "reasoned: amd"}}}}},
        "kernels": {"k": {"*": {"BLOCK": 512, "source": "reasoned: generic"}},
                    "only_default": {"*": {"BLOCK": 1024, "source": "reasoned: generic"}}}})
    monkeypatch.setattr(tuning, "CONFIG_DIR", cfg)
    return cfg


DEFAULT = {"BLOCK": 1, "num_warps": 4}


@pytest.mark.parametrize("arch,level,block", [
    ("gfx1100", "arch", 16),      # shipped arch file
    ("gfx1101", "family", 16),    # same family (rdna3) as gfx1100.json
    ("gfx942", "arch", 64),
    ("sm80", "family", 128),      # default.json families.ampere
    ("gfx90a", "vendor", 256),    # cdna2: no family entry -> vendors.amd
    ("sm90", "default", 512),     # hopper: no table here -> default.json kernels
    ("cpu", "builtin", 1),        # no GPU (the interpreter): the launcher's own default
])
def test_lookup_levels(tables, arch, level, block):
    r = tuning.resolve("k", tuning.bucket(N=7), DEFAULT, arch=arch)
    assert (r.level, r.config["BLOCK"]) == (level, block)
    assert r.source.startswith("reasoned: ") or level == "builtin"
    assert "source" not in r.config


def test_builtin_default_when_no_table_has_the_kernel(tables):
    r = tuning.resolve("nobody", "N8", DEFAULT, arch="gfx1100")
    assert r.level == "builtin" and r.config == DEFAULT
    assert tuning.get_config("only_default", "N8", DEFAULT, arch="gfx1100")["BLOCK"] == 1024


def test_user_table_wins(tables, tmp_path, monkeypatch):
    user = _write(tmp_path / "mine.json", {
        "arch": "gfx1100", "family": "rdna3", "source": "sweep 2025-01-01 test",
        "kernels": {"k": {"N8": {"BLOCK": 32, "source": "sweep 2025-01-01 test"}}}})
    monkeypatch.setenv("FORGE_TUNING_TABLE", str(user))
    r = tuning.resolve("k", "N8", DEFAULT, arch="gfx1100")
    assert (r.level, r.config["BLOCK"], r.key) == ("user", 32, "N8")
    # different dims in the user table: its only bucket is not comparable and it has no "*",
    # so lookup falls through to the shipped file
    r = tuning.resolve("k", "T8", DEFAULT, arch="gfx1100")
    assert (r.level, r.config["BLOCK"]) == ("arch", 16)


def test_user_table_in_home_cache(tables, tmp_path, monkeypatch):
    home = tmp_path / "home"
    d = home / ".cache" / "forge" / "tuning"
    d.mkdir(parents=True)
    _write(d / "gfx942.json", {"arch": "gfx942", "kernels": {"k": {"*": {"BLOCK": 8, "source": "sweep x"}}}})
    assert tuning.get_config("k", "N1", DEFAULT, arch="gfx942")["BLOCK"] == 8
    assert tuning.get_config("k", "N1", DEFAULT, arch="gfx1100")["BLOCK"] == 16  # other arch: own file


def test_user_table_for_other_arch_is_ignored_with_warning(tables, tmp_path, monkeypatch):
    user = _write(tmp_path / "mine.json", {"arch": "sm90", "kernels": {"k": {"*": {"BLOCK": 2}}}})
    monkeypatch.setenv("FORGE_TUNING_TABLE", str(user))
    with pytest.warns(RuntimeWarning, match="sm90"):
        cfg = tuning.get_config("k", "N8", DEFAULT, arch="gfx1100")
    assert cfg["BLOCK"] == 16


@pytest.mark.parametrize("content", ["{not json", json.dumps({"kernels": {"k": {"N8": {"BLOCK": 3}}}}),
                                     json.dumps({"kernels": {"k": {"N8": {"num_warps": 6}}}}),
                                     json.dumps({"kernels": {"k": {"bogus bucket": {}}}})])
def test_invalid_user_table_is_ignored_with_warning(tables, tmp_path, monkeypatch, content):
    p = tmp_path / "bad.json"
    p.write_text(content)
    monkeypatch.setenv("FORGE_TUNING_TABLE", str(p))
    with pytest.warns(RuntimeWarning, match="ignoring tuning table"):
        cfg = tuning.get_config("k", "N8", DEFAULT, arch="gfx1100")
    assert cfg["BLOCK"] == 16


def test_missing_user_table_env_warns(tables, tmp_path, monkeypatch):
    monkeypatch.setenv("FORGE_TUNING_TABLE", str(tmp_path / "nope.json"))
    with pytest.warns(RuntimeWarning, match="does not exist"):
        assert tuning.get_config("k", "N8", DEFAULT, arch="gfx1100")["BLOCK"] == 16


def test_invalid_shipped_table_raises(tables):
    (tables / "gfx1100.json").write_text(json.dumps({"kernels": {"k": {"*": {"BLOCK_N": 24}}}}))
    with pytest.raises(ValueError, match="BLOCK_N"):
        tuning.get_config("k", "N8", DEFAULT, arch="gfx1100")


# ---------------------------------------------------------------------------------------------
# within one table


def _sm90_only(tmp_path, monkeypatch, kernels: dict) -> None:
    """Shipped tables of one sm90 file holding `kernels` (and an empty default.json)."""
    cfg = tmp_path / "configs"
    cfg.mkdir()
    _write(cfg / "sm90.json", {"arch": "sm90", "family": "hopper", "kernels": kernels})
    _write(cfg / "default.json", {"kernels": {}})
    monkeypatch.setattr(tuning, "CONFIG_DIR", cfg)


@pytest.fixture
def one_table(tmp_path, monkeypatch):
    _sm90_only(tmp_path, monkeypatch, {"g": {
        "K1024_N1024": {"BLOCK_N": 16, "source": "reasoned: a"},
        "K4096_N4096": {"BLOCK_N": 64, "source": "reasoned: b"},
        "K4096_N16384": {"BLOCK_N": 128, "source": "reasoned: c"},
        # not canonical on disk: unsorted and not a power of two -> canonicalised to K256_N256
        "N200_K256": {"BLOCK_N": 32, "source": "reasoned: d"},
        "*": {"BLOCK_N": 8, "source": "reasoned: star"},
    }})


@pytest.mark.parametrize("dims,key,block", [
    ({"K": 4096, "N": 4096}, "K4096_N4096", 64),      # exact
    ({"K": 3000, "N": 3000}, "K4096_N4096", 64),      # exact after rounding
    ({"K": 4096, "N": 8192}, "K4096_N4096", 64),      # tie (1 vs 1): the smaller bucket
    ({"K": 4096, "N": 65536}, "K4096_N16384", 128),   # nearest
    ({"K": 1024, "N": 2048}, "K1024_N1024", 16),
    ({"K": 128, "N": 128}, "K256_N256", 32),
    ({"T": 4}, "*", 8),                               # no comparable bucket -> "*"
])
def test_exact_nearest_star(one_table, dims, key, block):
    r = tuning.resolve("g", tuning.bucket(**dims), {"BLOCK_N": 1}, arch="sm90")
    assert (r.key, r.config["BLOCK_N"]) == (key, block)


@pytest.mark.parametrize("dims,key", [
    ({"d": 256, "g": 4, "t": 4096}, "d256_g4_t4096"),   # exact
    ({"d": 256, "g": 4, "t": 8192}, "d256_g4_t4096"),   # 1 (t) vs d128_g4's 1 (d): more dims
    ({"d": 256, "g": 4, "t": 2048}, "d256_g4_t4096"),   # 1, tied with d128_g4: more dims
    ({"d": 256, "g": 4, "t": 1024}, "d256_g4_t512"),    # 1, tied with d128_g4: more dims
    ({"d": 128, "g": 4, "t": 8192}, "d128_g4"),         # names no t: exact on d and g
    ({"d": 64, "g": 4, "t": 512}, "d128_g4"),           # 1 vs t512's 2 (d 64 -> 256)
    ({"d": 256, "g": 4}, "d128_g4"),                    # t not asked: the t entries cannot match
    ({"t": 512}, "*"),                                  # every entry names a dim not asked
])
@pytest.mark.filterwarnings("ignore:.*name different dims:RuntimeWarning")
def test_entries_that_leave_a_dim_out_match_any_value_of_it(tmp_path, monkeypatch, dims, key):
    """A table written before the launcher asked for `t` (d128_g4) keeps serving; the distance
    counts the dims an entry names, and a tie goes to the entry naming more."""
    _sm90_only(tmp_path, monkeypatch, {"p": {
        "d256_g4_t512": {"BLOCK_M": 64, "source": "reasoned: a"},
        "d256_g4_t4096": {"BLOCK_M": 128, "source": "reasoned: b"},
        "d128_g4": {"BLOCK_M": 32, "source": "reasoned: c"},
        "*": {"BLOCK_M": 16, "source": "reasoned: star"},
    }})
    r = tuning.resolve("p", tuning.bucket(**dims), {"BLOCK_M": 1}, arch="sm90")
    assert r.key == key


def test_nearest_tie_break_prefers_smaller_bucket(one_table):
    # K512_N512 is 2 away from both K1024_N1024 and K256_N256
    r = tuning.resolve("g", "K512_N512", {"BLOCK_N": 1}, arch="sm90")
    assert r.key == "K256_N256"


def test_amd_keys_only_on_amd(tables):
    d = {"BLOCK": 1, "num_warps": 4, "kpack": 1}
    amd = tuning.get_config("k", "N8", d, arch="gfx942")
    assert amd == {"BLOCK": 64, "num_warps": 8, "kpack": 2, "waves_per_eu": 2, "matrix_instr_nonkdim": 16}
    # the launcher's own AMD-only default is dropped off AMD too
    nv = tuning.get_config("k", "N8", d, arch="sm90")
    assert nv == {"BLOCK": 512, "num_warps": 4}
    assert not tuning.AMD_ONLY_KEYS & tuning.get_config("k", "N8", d, arch="cpu").keys()


def test_unknown_keys_dropped_with_warning(tables):
    (tables / "gfx1100.json").write_text(json.dumps({"arch": "gfx1100", "family": "rdna3", "kernels": {
        "k": {"*": {"BLOCK": 32, "BLOCK_Q": 64, "num_stages": 2, "source": "reasoned: x"}}}}))
    with pytest.warns(RuntimeWarning, match="BLOCK_Q"):
        cfg = tuning.get_config("k", "N8", {"BLOCK": 1}, arch="gfx1100")
    assert cfg == {"BLOCK": 32, "num_stages": 2}  # launch options always pass


def test_results_are_copies_and_cached(tables):
    a = tuning.get_config("k", "N8", DEFAULT, arch="gfx1100")
    a["BLOCK"] = 999
    assert tuning.get_config("k", "N8", DEFAULT, arch="gfx1100")["BLOCK"] == 16


def test_arch_from_device_module(tables, monkeypatch):
    monkeypatch.setenv("FORGE_ARCH", "gfx942")
    assert tuning.get_config("k", "N8", DEFAULT)["BLOCK"] == 64
    monkeypatch.setenv("FORGE_ARCH", "gfx1100")
    assert tuning.get_config("k", "N8", DEFAULT)["BLOCK"] == 16


def test_bad_arguments():
    with pytest.raises(ValueError, match="kernel"):
        tuning.get_config("", "N8", {})
    with pytest.raises(ValueError, match="bucket"):
        tuning.get_config("k", "n-8", {})
    with pytest.raises(ValueError, match="default"):
        tuning.get_config("k", "N8", None)


# ---------------------------------------------------------------------------------------------
# the shipped tables

SHIPPED = sorted(tuning.CONFIG_DIR.glob("*.json"))
AMD_RULES = {
    # arch: (wave size, allowed num_stages, allowed matrix_instr_nonkdim)
    "gfx1100": (32, {1, 2}, {0, 16}),
    "gfx942": (64, {1, 2}, {0, 16, 32}),
}


def _all_entries(doc, file_vendor):
    """(kernel, bucket, entry, vendor the entry is for) over all sections of a table."""
    yield from ((k, b, e, file_vendor) for k, bs in doc.get("kernels", {}).items() for b, e in bs.items())
    for sect, vendor_of in (("families", device.vendor_of_family), ("vendors", lambda v: v)):
        for name, body in doc.get(sect, {}).items():
            v = vendor_of(name)
            assert v is not None, f"{sect}.{name}: unknown family/vendor"
            yield from ((k, b, e, v) for k, bs in body.get("kernels", {}).items() for b, e in bs.items())


def test_shipped_tables_exist():
    names = {p.stem for p in SHIPPED}
    assert {"gfx1100", "gfx942", "sm90", "default"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_table_schema_and_provenance(path):
    doc = json.loads(path.read_text())
    tuning.parse_table(doc, str(path))  # raises on schema errors
    assert doc.get("source"), f"{path.name}: top-level 'source' missing"
    if path.stem != "default":
        assert doc["arch"] == path.stem
        assert doc["family"] == device.family_of(path.stem)
    n = 0
    for kernel, b, e, vendor in _all_entries(doc, device.vendor_of(path.stem)):
        amd = vendor == "amd"
        n += 1
        where = f"{path.name}:{kernel}[{b}]"
        src = e.get("source", "")
        assert src.startswith("sweep ") or src.startswith("reasoned: "), f"{where}: source {src!r}"
        if b != "*":
            assert b == tuning.bucket(**tuning.parse_bucket(b)), f"{where}: bucket not canonical"
        if not amd:
            assert not tuning.AMD_ONLY_KEYS & e.keys(), f"{where}: AMD-only keys in a non-AMD table"
        if path.stem in AMD_RULES:
            _, stages, nonk = AMD_RULES[path.stem]
            assert e.get("num_stages", 1) in stages, where
            assert e.get("matrix_instr_nonkdim", 0) in nonk, where
            assert e.get("kpack", 1) in (1, 2), where
            if path.stem == "gfx1100":
                for k, v in e.items():
                    if k.startswith("BLOCK") and kernel in ("linear_gemm", "attn_prefill"):
                        assert v % 16 == 0, f"{where}: {k}={v} is not a multiple of the WMMA tile 16"
        if path.stem == "sm90" and kernel == "linear_gemm":
            assert e.get("num_stages", 3) in (3, 4), where
    assert n > 0, f"{path.name} has no entries"


# ---------------------------------------------------------------------------------------------
# in-memory overrides (autotune.sweep) and the autotune tools' GPU-free parts


def test_override_beats_every_table_and_is_undone(tables):
    assert tuning.get_config("k", "N8", DEFAULT, arch="gfx1100")["BLOCK"] == 16
    with tuning.override({"k": {"*": {"BLOCK": 4096, "num_warps": 8}}}):
        assert tuning.get_config("k", "N8", DEFAULT, arch="gfx1100") == {"BLOCK": 4096, "num_warps": 8}
        assert tuning.get_config("k", "N8", DEFAULT, arch="cpu")["BLOCK"] == 4096  # even on CPU
    assert tuning.get_config("k", "N8", DEFAULT, arch="gfx1100")["BLOCK"] == 16
    with pytest.raises(ValueError, match="BLOCK"):
        with tuning.override({"k": {"*": {"BLOCK": 3}}}):
            pass


@pytest.mark.parametrize("family", ["cdna3", "rdna3", "hopper", "ampere"])
@pytest.mark.parametrize("kernel", ["linear_gemv", "linear_gemm", "linear_kq", "dequant", "attn_prefill",
                                    "attn_decode", "attn_reduce", "rms_norm", "rope", "act_mul", "sample"])
def test_search_spaces_are_valid_tables(family, kernel):
    from autotune import spaces

    amd = family in ("cdna3", "rdna3")
    if kernel == "linear_kq" and amd:
        pytest.skip("linear_kq is NVIDIA only (test_linear_kq_space_and_problems)")
    cands = spaces.space(kernel, family, sub=32, lds_bytes=64 * 1024)
    assert cands, f"empty space for {kernel} on {family}"
    assert len({json.dumps(c, sort_keys=True) for c in cands}) == len(cands)
    for c in cands:
        tuning._validate_entry(f"{family}:{kernel}", c)  # powers of two etc.
        if not amd:
            assert not tuning.AMD_ONLY_KEYS & c.keys()
        else:
            assert c.get("num_stages", 1) <= 2
        if kernel == "linear_gemm":
            kt = c["BLOCK_S"] * 32
            assert (c["BLOCK_M"] + c["BLOCK_N"]) * kt * 2 * c["num_stages"] <= 64 * 1024
    with pytest.raises(ValueError, match="kernel"):
        spaces.space("nope", family)


@pytest.mark.parametrize("axis,key,values", [("gemv_prefetch", "PREFETCH", (0, 1, 2, 3, 4)),
                                              ("gemv_x_pre", "X_PRE", (0, 1)),
                                              ("gemv_l2pf", "L2PF", (0, 1, 2, 64))])
def test_gemv_prefetch_and_x_pre_are_opt_in_sweep_axes_on_nvidia(axis, key, values):
    """gemv_prefetch / gemv_x_pre / gemv_l2pf (sweep --gemv-prefetch / --gemv-x-pre /
    --gemv-l2pf) multiply the NVIDIA GEMV candidates; by default the key is not in the
    candidates at all (the bucket's current value is kept, see
    test_sweep_candidates_keep_the_keys_no_space_varies); AMD's space has none of them, and
    X_PRE is an axis only for a type with an int8 GEMV."""
    from autotune import spaces, sweep

    base = spaces.space("linear_gemv", "hopper", sub=32, int8=True)
    assert base and all(key not in c for c in base)
    both = spaces.space("linear_gemv", "hopper", sub=32, int8=True, **{axis: values})
    assert len(both) == len(values) * len(base)
    assert sorted({c[key] for c in both}) == list(values)
    for c in both:
        tuning._validate_entry("hopper:linear_gemv", c)
    assert all(key not in c for c in spaces.space("linear_gemv", "cdna3", sub=32, **{axis: (0, 1)}))
    if key == "X_PRE":
        assert all(key not in c for c in spaces.space("linear_gemv", "hopper", sub=1, **{axis: (0, 1)}))
    flag = "--" + axis.replace("_", "-")
    for bad in ({"L2PF": "0,5000", "PREFETCH": "0,5"}.get(key, "0,3"), "-1", "zero"):
        with pytest.raises(SystemExit):
            sweep.main(["--kernel", "linear_gemv", flag, bad])
    for bad in ("1.0", "-0.1"):
        with pytest.raises(SystemExit):
            sweep.main(["--kernel", "linear_gemv", "--min-gain", bad])


def test_gemv_async_is_an_opt_in_sweep_axis_for_its_types():
    """gemv_async (sweep --gemv-async) adds the shared-memory GEMV's candidates (ring slots x
    rows x warps, int8 x quantized first, no K split) on NVIDIA for a type with an int8 GEMV;
    `async_fits` keeps only those a problem's shape can take on a GPU that runs the kernel; the
    flag's values are checked."""
    from autotune import spaces, sweep
    from forge.kernels import gemv_async

    base = spaces.space("linear_gemv", "hopper", sub=32, int8=True)
    both = spaces.space("linear_gemv", "hopper", sub=32, int8=True, gemv_async=(3, 4))
    extra = both[len(base):]
    assert both[:len(base)] == base and len(extra) == 2 * 3 * 3
    assert all(c["ASYNC"] == 0 for c in base)
    assert {(c["ASYNC"], c["ASYNC_BN"], c["ASYNC_WARPS"]) for c in extra} == \
        {(s_, bn, w) for s_ in (3, 4) for bn in (2, 4, 8) for w in (1, 2, 4)}
    for c in extra:
        assert c["SPLIT_K"] == 1 and c["X_PRE"] == 1 and c["X_INT8"] == 1 and c["ASYNC_XA"] == 1
        tuning._validate_entry("hopper:linear_gemv", c)
    assert spaces.space("linear_gemv", "hopper", sub=32, int8=True, gemv_async=(0,)) == base
    assert spaces.space("linear_gemv", "cdna3", sub=32, int8=True, gemv_async=(4,)) == \
        spaces.space("linear_gemv", "cdna3", sub=32, int8=True)
    assert spaces.space("linear_gemv", "hopper", sub=32, gemv_async=(4,)) == \
        spaces.space("linear_gemv", "hopper", sub=32)

    probs = {p.name: p for p in spaces.problems("linear_gemv", ("Q4_K", "Q8_0", "Q6_K"))}
    assert probs["Q4_K T1 N4096 K14336"].extra["async"]
    assert probs["Q8_0 T1 N4096 K14336"].extra["async"]
    assert not probs["Q6_K T1 N4096 K14336"].extra["async"]
    sm90 = 227 * 1024
    # Q4_K at K 14336: 448 chunks, whole steps of 32 x W chunks for W 1 and 2 only (12 of 18);
    # Q8_0: 896 chunks, W 1, 2 and 4 (all 18)
    for name, dropped_w, n_kept in (("Q4_K T1 N4096 K14336", {4}, 12),
                                    ("Q8_0 T1 N4096 K14336", set(), 18)):
        p = probs[name]
        cur = sweep.current_entry(p.kernel, tuning.bucket(**p.dims), "sm90")
        cands = sweep.with_current(both, cur)
        kept = sweep.async_fits(p, cands, smem=sm90)
        gone = [c for c in cands if c not in kept]
        assert {c["ASYNC_WARPS"] for c in gone} == dropped_w and all(c["ASYNC"] for c in gone)
        assert sum(1 for c in kept if c["ASYNC"]) == n_kept
        # a GPU that cannot run the kernel (smem_limit 0) times none of them
        assert sweep.async_fits(p, cands, smem=0) == \
            [c for c in cands if not c["ASYNC"]]
        # nor one whose x is not int8 (float32 activations)
        assert all(not c["ASYNC"] for c in sweep.async_fits(
            p, [dict(c, X_INT8=0) for c in cands], smem=sm90))
    # the ring must fit a program's shared memory: Q4_K S 8 BN 8 W 4 needs 228 KiB
    p = probs["Q4_K T1 N4096 K4096"]
    eight = sweep.with_current(spaces.space("linear_gemv", "hopper", sub=32, int8=True,
                                            gemv_async=(8,)), {})
    kept = {(c["ASYNC_BN"], c["ASYNC_WARPS"]) for c in
            sweep.async_fits(p, eight, smem=sm90) if c.get("ASYNC")}
    assert kept == {(bn, w) for bn in (2, 4, 8) for w in (1, 2, 4)} - {(8, 4)}
    assert gemv_async.smem_bytes(dq_id(p), dict(eight[-1])) > sm90
    for bad in ("1", "4,9", "x"):
        with pytest.raises(SystemExit):
            sweep.main(["--kernel", "linear_gemv", "--gemv-async", bad])


def dq_id(p) -> int:
    from forge.kernels import dequant
    return dequant.TYPE_IDS[p.kernel.partition(".")[2]]


@pytest.fixture
def typed_tables(tmp_path, monkeypatch):
    """sm90 (hopper, nvidia): a shipped arch file with a generic "lin" and a per-type "lin.Q4_K"
    kernel, and default.json with a vendor "lin" entry."""
    cfg = tmp_path / "configs"
    cfg.mkdir()
    _write(cfg / "sm90.json", {
        "arch": "sm90", "family": "hopper", "source": "test",
        "kernels": {
            "lin": {"N4096": {"BLOCK": 8, "num_warps": 2, "source": "sweep g"},
                    "N16384": {"BLOCK": 16, "num_warps": 4}},
            "lin.Q4_K": {"N4096": {"BLOCK": 32, "PDL": 1, "X_PRE": 1, "source": "sweep q",
                                   "comment": "why"},
                         "N16384": {"PDL": 0}}}})
    _write(cfg / "default.json", {"arch": None, "family": None, "source": "test",
                                  "vendors": {"nvidia": {"kernels": {"other": {"*": {"BLOCK": 2}}}}}})
    monkeypatch.setattr(tuning, "CONFIG_DIR", cfg)
    return cfg


def test_sweep_candidates_keep_the_keys_no_space_varies(typed_tables, tmp_path, monkeypatch):
    """current_entry combines a per-type kernel's generic and own entries as matmul does
    (tuning.typed_wins); with_current lays the candidates over it, so keys no space varies (PDL,
    X_PRE, ...) are timed and written with their current values."""
    from autotune import sweep

    cur = sweep.current_entry("lin.Q4_K", "N4096", "sm90")
    assert cur == {"BLOCK": 32, "num_warps": 2, "PDL": 1, "X_PRE": 1}      # notes dropped
    assert sweep.current_entry("lin.Q4_K", "N16384", "sm90") == {"BLOCK": 16, "num_warps": 4, "PDL": 0}
    assert sweep.current_entry("lin.Q6_K", "N4096", "sm90") == {"BLOCK": 8, "num_warps": 2}
    assert sweep.current_entry("other", "N8", "sm90") == {"BLOCK": 2}
    assert sweep.current_entry("none", "N8", "sm90") == {}
    assert sweep.current_entry("lin.Q4_K", "N4096", "cpu") == {}           # no tables on the CPU
    cands = sweep.with_current([{"BLOCK": 64}, {"BLOCK": 128, "PDL": 0}], cur)
    assert cands == [{"BLOCK": 64, "num_warps": 2, "PDL": 1, "X_PRE": 1},
                     {"BLOCK": 128, "num_warps": 2, "PDL": 0, "X_PRE": 1}]
    # a user table's generic entry outranks the shipped per-type one: the per-type keys go
    user = _write(tmp_path / "user.json", {"arch": "sm90", "kernels": {"lin": {"*": {"BLOCK": 4}}}})
    monkeypatch.setenv("FORGE_TUNING_TABLE", str(user))
    tuning.clear_cache()
    assert sweep.current_entry("lin.Q4_K", "N4096", "sm90") == {"BLOCK": 4}
    # and overrides (the sweep's own candidates) are not "current"
    with tuning.override({"lin.Q4_K": {"*": {"BLOCK": 1024}}}):
        assert sweep.current_entry("lin.Q4_K", "N4096", "sm90") == {"BLOCK": 4}


def test_sweep_seeds_a_kernel_with_the_entries_that_serve_it(typed_tables):
    """The first table with a kernel serves all its buckets, so the sweep copies the serving
    entries into its output table before the kernel's first swept entry: a bucket it did not
    time resolves as before."""
    from autotune import sweep

    t = sweep.new_table("sm90", "hopper", "H100", "2026-11-23")
    assert sweep.seed_kernel(t, "lin.Q4_K", "sm90") == 2
    q = t["kernels"]["lin.Q4_K"]
    assert q["N4096"]["BLOCK"] == 32 and q["N4096"]["source"] == "sweep q"
    assert q["N4096"]["comment"].startswith("copied from forge/kernels/configs/sm90.json (arch)")
    assert q["N4096"]["comment"].endswith("why")
    assert q["N16384"]["PDL"] == 0 and "copied from" in q["N16384"]["comment"]
    assert sweep.seed_kernel(t, "lin.Q4_K", "sm90") == 0                  # present: untouched
    # a per-type kernel no table has: the generic kernel's entries
    assert sweep.seed_kernel(t, "lin.Q6_K", "sm90") == 2
    assert t["kernels"]["lin.Q6_K"]["N16384"]["BLOCK"] == 16
    assert sweep.seed_kernel(t, "nothing", "sm90") == 0 and "nothing" not in t["kernels"]
    tuning.parse_table(t)                                                 # still a valid table
    # the written table, read back as the user table, resolves unswept buckets as before
    sweep.merge_entry(t, "lin.Q4_K", "N4096", {"BLOCK": 64, "PDL": 1, "X_PRE": 1, "source": "s"})
    before = tuning.resolve("lin.Q4_K", "N16384", {"BLOCK": 1, "PDL": 1, "num_warps": 1}, arch="sm90")
    with tuning.override(t["kernels"]):
        after = tuning.resolve("lin.Q4_K", "N16384", {"BLOCK": 1, "PDL": 1, "num_warps": 1}, arch="sm90")
    assert after.config == before.config == {"BLOCK": 1, "PDL": 0, "num_warps": 1}


def _typed(generic: str, typed: str, b: str, default: dict, arch: str = "sm90") -> dict:
    """What matmul._cfg gives: the generic entry, then the per-type one where it wins."""
    base = tuning.resolve(generic, b, default, arch)
    spec = tuning.resolve(typed, b, base.config, arch)
    return spec.config if tuning.typed_wins(base.level, spec.level) else base.config


def test_sweep_seeds_from_the_generic_kernel_where_it_decides(typed_tables, tmp_path, monkeypatch):
    """A user table's generic "lin" outranks the shipped "lin.Q4_K" (which then does not
    apply). Once the sweep writes "lin.Q4_K" into the user table, both are at the user level
    and the per-type entries would win: so the seed is the generic kernel's entries, and the
    buckets the sweep did not time resolve as before."""
    from autotune import sweep

    user = tmp_path / "user.json"
    doc = {"arch": "sm90", "source": "mine",
           "kernels": {"lin": {"N4096": {"BLOCK": 4}, "N65536": {"BLOCK": 2, "num_warps": 8}}}}
    _write(user, doc)
    monkeypatch.setenv("FORGE_TUNING_TABLE", str(user))
    tuning.clear_cache()
    default = {"BLOCK": 1, "PDL": 1, "X_PRE": 0, "num_warps": 1}
    probe = ["N4096", "N16384", "N65536", "N1024"]
    before = [_typed("lin", "lin.Q4_K", b, default) for b in probe]
    assert before[0] == {"BLOCK": 4, "PDL": 1, "X_PRE": 0, "num_warps": 1}   # the user's, not 32
    assert sweep.seed_kernel(doc, "lin.Q4_K", "sm90") == 2
    assert doc["kernels"]["lin.Q4_K"]["N65536"]["source"] == "mine"      # the table's source
    # a swept bucket nearer to none of the probes than their own (N16384 would take an N8192
    # one: test_a_new_bucket_serves_the_shapes_nearest_to_it)
    sweep.merge_entry(doc, "lin.Q4_K", "N128", {"BLOCK": 64, "source": "sweep"})
    _write(user, doc)
    tuning.clear_cache()
    after = [_typed("lin", "lin.Q4_K", b, default) for b in probe]
    assert after == before
    assert _typed("lin", "lin.Q4_K", "N128", default)["BLOCK"] == 64


def test_a_new_bucket_serves_the_shapes_nearest_to_it(typed_tables):
    """The documented limit of seeding: a kernel served by "*" alone, or a shape nearer to the
    new bucket than to any copied one, takes the swept config (nearest-bucket rule)."""
    from autotune import sweep

    t = sweep.new_table("sm90", "hopper", "H100", "2026-11-23")
    assert sweep.seed_kernel(t, "other", "sm90") == 1                   # default.json's "*"
    sweep.merge_entry(t, "other", "N8", {"BLOCK": 128, "source": "sweep"})
    with tuning.override(t["kernels"]):
        assert tuning.get_config("other", "N8", {"BLOCK": 1}, arch="sm90")["BLOCK"] == 128
        assert tuning.get_config("other", "N4096", {"BLOCK": 1}, arch="sm90")["BLOCK"] == 128


def test_sweep_widens_entries_that_leave_a_dim_out():
    """A user table from before attn_prefill's bucket named t and kv: the sweep gives each entry
    the (kv, t) of its head dim's problems (a d_t entry the kv), keeps entries that name both,
    and leaves "*" alone; afterwards a far shape of an old head dim still takes that head dim's
    config."""
    from autotune import spaces, sweep

    t = sweep.new_table("sm90", "hopper", "H100", "2026-11-24")
    for b, blk in (("d128_g4", 128), ("d64_g4", 64), ("d256_g4_t2048", 32),
                   ("d256_g4_kv512_t8192", 8), ("*", 16)):
        sweep.merge_entry(t, "attn_prefill", b, {"BLOCK_M": blk, "source": "sweep x"})
    probs = spaces.problems("attn_prefill")
    assert sweep.widen_entries(t, "attn_prefill", probs) == 3
    got = t["kernels"]["attn_prefill"]
    # the d64 / d128 problems: 512 after 4096, 2048 whole, 4 x 512 after 4096, 8192 whole
    llama = ["kv4096_t512", "kv2048_t2048", "kv4096_t2048", "kv8192_t8192"]
    # d256's also run under the 512-key window (kv512): t2048 takes every kv of them
    assert sorted(got) == sorted(["*", "d256_g4_kv512_t8192"]
                                 + [f"d{d}_g4_{b}" for d in (64, 128) for b in llama]
                                 + [f"d256_g4_kv{kv}_t2048" for kv in (512, 2048, 4096, 8192)])
    assert got["d128_g4_kv8192_t8192"]["BLOCK_M"] == 128
    assert got["d128_g4_kv8192_t8192"]["comment"].startswith("widened from d128_g4")
    assert got["d256_g4_kv512_t2048"]["BLOCK_M"] == 32
    assert sweep.widen_entries(t, "attn_prefill", probs) == 0          # nothing left to widen
    sweep.merge_entry(t, "attn_prefill", "d256_g4_kv8192_t8192", {"BLOCK_M": 256,
                                                                  "source": "sweep y"})
    with tuning.override(t["kernels"]):
        r = tuning.resolve("attn_prefill", "d128_g4_kv65536_t65536", {"BLOCK_M": 1}, arch="sm90")
        assert (r.key, r.config["BLOCK_M"]) == ("d128_g4_kv8192_t8192", 128)
        r = tuning.resolve("attn_prefill", "d256_g4_kv65536_t65536", {"BLOCK_M": 1}, arch="sm90")
        assert r.config["BLOCK_M"] == 256


@pytest.mark.parametrize("kernel,dims,key", [
    ("attn_prefill", {"d": 256, "g": 4, "kv": 512, "t": 512}, "d256_g4_kv512_t2048"),
    ("attn_prefill", {"d": 256, "g": 2, "kv": 1024, "t": 2048}, "d256_g4_kv512_t2048"),
    ("attn_prefill", {"d": 256, "g": 4, "kv": 65536, "t": 1024}, "d256_g4_kv8192_t2048"),
    # d128 is one step from d256's entries but matches none: the "*" entry
    ("attn_prefill", {"d": 128, "g": 4, "kv": 512, "t": 2048}, "*"),
    ("attn_prefill", {"d": 64, "g": 4, "kv": 512, "t": 2048}, "d64_g4_kv512_t8192"),
    ("attn_prefill.x", {"d": 128, "g": 4, "kv": 512, "t": 2048}, "*"),   # the base kernel's rule
    ("attn_decode", {"d": 128, "g": 4, "kv": 512, "t": 2048}, "*"),
    # a kernel with no exact dims takes the nearest head dim
    ("p", {"d": 128, "g": 4, "kv": 512, "t": 2048}, "d256_g4_kv512_t2048"),
])
def test_attention_head_dim_is_matched_exactly(tmp_path, monkeypatch, kernel, dims, key):
    """A head dim is a category: an attention entry tuned at another head dim never serves, however
    near its other dims (tuning.EXACT_DIMS); "*" (or the next table) does instead."""
    entries = {"d256_g4_kv512_t2048": {"BLOCK_M": 64, "source": "reasoned: a"},
               "d256_g4_kv8192_t2048": {"BLOCK_M": 128, "source": "reasoned: b"},
               "d64_g4_kv512_t8192": {"BLOCK_M": 32, "source": "reasoned: c"},
               "*": {"BLOCK_M": 16, "source": "reasoned: star"}}
    _sm90_only(tmp_path, monkeypatch, {kernel: entries})
    r = tuning.resolve(kernel, tuning.bucket(**dims), {"BLOCK_M": 1}, arch="sm90")
    assert r.key == key
    assert tuning.match_distance(dims, {"d": 256}, ("d",)) == (0 if dims["d"] == 256 else math.inf)


def test_an_exact_dim_miss_falls_through_to_the_next_table(tmp_path, monkeypatch):
    """A user table that has only d128 attn_prefill entries leaves a d256 call to the shipped
    table (the first table with the kernel no longer serves every bucket of it)."""
    _sm90_only(tmp_path, monkeypatch, {"attn_prefill": {
        "d256_g4_kv512_t2048": {"BLOCK_M": 64, "source": "reasoned: shipped"}}})
    user = tmp_path / "user.json"
    _write(user, {"arch": "sm90", "kernels": {"attn_prefill": {
        "d128_g4_kv8192_t2048": {"BLOCK_M": 128, "source": "sweep user"}}}})
    monkeypatch.setenv("FORGE_TUNING_TABLE", str(user))
    tuning.clear_cache()
    r = tuning.resolve("attn_prefill", "d256_g4_kv8192_t2048", {"BLOCK_M": 1}, arch="sm90")
    assert (r.level, r.config["BLOCK_M"]) == ("arch", 64)
    r = tuning.resolve("attn_prefill", "d128_g4_kv512_t512", {"BLOCK_M": 1}, arch="sm90")
    assert (r.level, r.config["BLOCK_M"]) == ("user", 128)


@pytest.mark.parametrize("tokens,keys,block_m", [
    (512, 512, 64), (2048, 512, 64), (2048, 6144, 128), (1024, 32768, 128), (512, 32768, 64),
    (512, 4608, 64), (1024, 1024, 64), (2048, 2048, 64), (8192, 512, 128), (4096, 4096, 128),
])
def test_shipped_sm90_prefill_tiles_at_gemma3_heads(monkeypatch, tokens, keys, block_m):
    """The sm90 table's attn_prefill tiles at Gemma 3 heads (4:1, d256) per (query tokens,
    keys a query may attend): the 128-row tile for more than 2048 tokens, and from 1024 on a
    global layer (a long context, or a prefill graph's capacity); 64 rows for up to 2048 tokens
    under the 512-key window (bench/results/run24 call 3, run25). Llama heads keep one tile."""
    from forge.kernels import attention as attn

    monkeypatch.setenv("FORGE_ARCH", "sm90")
    tuning.clear_cache()
    lds = 232448
    plan = attn._prefill_plan("nvidia", 256, 256, 4, 2, lds, tokens, keys)
    assert plan["BLOCK_M"] == block_m
    assert plan["BLOCK_N"] == (32 if block_m == 128 else 64)
    for d, tile in ((128, (128, 64)), (64, (64, 128))):
        plan = attn._prefill_plan("nvidia", d, d, 4, 2, lds, tokens, keys)
        assert (plan["BLOCK_M"], plan["BLOCK_N"]) == tile


def test_sweep_seeds_each_head_dim_of_an_attention_kernel(tmp_path, monkeypatch):
    """A user table holding attn_prefill entries of d128 only: before a d256 bucket is swept in,
    the entries that serve d256 now (the shipped table's, every one of that head dim) are
    copied, so the swept bucket does not serve every d256 shape alone; d128 entries are left
    alone, and a head dim the table has is not seeded again."""
    from autotune import sweep

    _sm90_only(tmp_path, monkeypatch, {"attn_prefill": {
        "d256_g4_kv512_t2048": {"BLOCK_M": 64, "source": "s1"},
        "d256_g4_kv8192_t2048": {"BLOCK_M": 128, "source": "s2"},
        "d128_g4_kv8192_t2048": {"BLOCK_M": 32, "source": "s3"}}})
    t = sweep.new_table("sm90", "hopper", "H100", "2026-11-24")
    sweep.merge_entry(t, "attn_prefill", "d128_g4_kv8192_t4096", {"BLOCK_M": 16, "source": "u"})
    user = tmp_path / "user.json"
    _write(user, t)
    monkeypatch.setenv("FORGE_TUNING_TABLE", str(user))
    tuning.clear_cache()
    assert sweep.seed_kernel(t, "attn_prefill", "sm90", "d128_g4_kv512_t512") == 0
    assert sweep.seed_kernel(t, "attn_prefill", "sm90", "d256_g4_kv512_t8192") == 2
    got = t["kernels"]["attn_prefill"]
    assert sorted(got) == ["d128_g4_kv8192_t4096", "d256_g4_kv512_t2048", "d256_g4_kv8192_t2048"]
    assert got["d256_g4_kv8192_t2048"]["comment"].startswith("copied from")
    assert sweep.seed_kernel(t, "attn_prefill", "sm90", "d256_g4_kv8192_t8192") == 0
    # a kernel without exact dims is seeded only when the table lacks it (as before)
    assert sweep.seed_kernel(t, "attn_prefill", "sm90") == 0


def test_report_compiles_the_entries_lookup_falls_through_to(tmp_path, monkeypatch):
    """autotune.report's entries for an attention kernel: a user table of d128 entries, then the
    shipped table's entries of the head dims the user table does not name (lookup falls
    through to them), not its d128 ones."""
    from autotune import report

    _sm90_only(tmp_path, monkeypatch, {"attn_prefill": {
        "d256_g4_kv512_t2048": {"BLOCK_M": 64, "source": "s1"},
        "d128_g4_kv8192_t2048": {"BLOCK_M": 32, "source": "s3"}}})
    user = tmp_path / "user.json"
    _write(user, {"arch": "sm90", "kernels": {"attn_prefill": {
        "d128_g4_kv8192_t4096": {"BLOCK_M": 16, "source": "u"}}, "lin": {"N8": {"BLOCK": 2}}}})
    monkeypatch.setenv("FORGE_TUNING_TABLE", str(user))
    tuning.clear_cache()
    got = [(label.split(":")[0], key) for label, _, key, _ in
           report._returnable("attn_prefill", "sm90", include_user=True)]
    assert got == [("user", "d128_g4_kv8192_t4096"), ("sm90", "d256_g4_kv512_t2048")]
    assert [k for _, _, k, _ in report._returnable("attn_prefill", "sm90", False)] == \
        ["d256_g4_kv512_t2048", "d128_g4_kv8192_t2048"]


def test_a_table_mixing_dims_warns():
    with pytest.warns(RuntimeWarning, match="name different dims"):
        tuning.parse_table({"kernels": {"mixdims": {"d128_g4": {"BLOCK_M": 64},
                                                    "d256_g4_t512": {"BLOCK_M": 32}}}})


def test_shipped_sm90_gemv_entries_are_what_a_sweep_keeps():
    """On the real sm90 table: a Q4_K GEMV bucket's current entry carries the keys no default
    space varies (X_PRE, PDL, PREFETCH), which a sweep of it therefore keeps."""
    from autotune import spaces, sweep

    cur = sweep.current_entry("linear_gemv.Q4_K", tuning.bucket(T=1, N=4096, K=14336), "sm90")
    assert cur["X_PRE"] == 1 and cur["PDL"] == 1 and cur["PREFETCH"] == 2
    cands = sweep.with_current(spaces.space("linear_gemv", "hopper", sub=32, int8=True), cur)
    assert all(c["X_PRE"] == 1 and c["PDL"] == 1 and c["PREFETCH"] == 2 for c in cands)
    f16 = sweep.current_entry("linear_gemv.F16", tuning.bucket(T=1, N=28672, K=4096), "sm90")
    assert f16["FUSE_NORM"] == 0 and f16["PDL"] == 0


def test_linear_kq_space_and_problems():
    """linear_kq (kgemm) is sweepable on NVIDIA only, for Q4_K / Q6_K, at T 16 / 32 / 64."""
    from autotune import spaces

    cands = spaces.space("linear_kq", "hopper")
    assert len(cands) == 32
    for c in cands:
        tuning._validate_entry("hopper:linear_kq", c)
    with pytest.raises(ValueError, match="NVIDIA"):
        spaces.space("linear_kq", "cdna3")
    probs = spaces.problems("linear_kq", ("Q4_K", "Q8_0", "Q6_K"))
    assert {p.kernel for p in probs} == {"linear_kq.Q4_K", "linear_kq.Q6_K"}
    assert {p.dims["T"] for p in probs} == {16, 32, 64}
    assert all(p.extra["fixed"]["BLOCK_M"] == p.dims["T"] for p in probs)   # BLOCK_M follows T
    assert all(p.space_kernel == "linear_kq" and p.dims["K"] % 256 == 0 for p in probs)
    assert "linear_kq" in spaces.SWEEPABLE and "linear_kq" in spaces.KERNELS


def test_sweep_refuses_to_run_without_gpu(monkeypatch, capsys):
    from autotune import sweep

    monkeypatch.setattr(device, "detect", lambda: None)
    assert sweep.main(["--kernel", "rms_norm", "--out", "x.json"]) == 2
    assert "GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.main(["--kernel", "bogus"])


def test_sweep_picks_the_fastest_correct_candidate(tables):
    """sweep_bucket with a fake timer: the run goes through get_config, so the override
    reaches it; a wrong-answer candidate is rejected, a crashing one is skipped."""
    torch = pytest.importorskip("torch")
    from autotune import spaces, sweep

    def setup(dev, dtype):
        def run():
            cfg = tuning.get_config("k", "N8", DEFAULT, arch="gfx1100")
            if cfg["BLOCK"] == 64:
                raise RuntimeError("out of resources")
            val = 1.0 if cfg["BLOCK"] != 32 else 2.0  # BLOCK 32 computes the wrong answer
            return torch.full((4,), val)
        return run

    def timer(fn, warmup, rep):
        fn()
        return {16: 5.0, 32: 0.1, 64: 0.1, 128: 3.0, 256: 4.0}[tuning.get_config("k", "N8", DEFAULT, arch="gfx1100")["BLOCK"]]

    prob = spaces.Problem("k", "k", "fake", {"N": 8}, setup)
    cands = [{"BLOCK": b} for b in (32, 64, 128, 256)]
    r = sweep.sweep_bucket([prob], cands, "cpu", torch.float32, warmup=1, rep=1, timer=timer)
    assert r["best"] == {"BLOCK": 128} and r["best_ms"] == [3.0] and r["shipped_ms"] == [5.0]
    assert r["best_score"] == pytest.approx(0.6)
    assert [c["BLOCK"] for c, _ in r["rejected"]] == [32, 64]
    assert "differs" in r["rejected"][0][1] and "out of resources" in r["rejected"][1][1]


def test_sweep_scores_the_problems_of_a_bucket_together(tables):
    """Two problems in one bucket (as attention's cases of one head shape): the winner is the
    best mean ratio to the current config over both, not the best on the last one (which
    would have been written before); a candidate wrong on either is rejected."""
    torch = pytest.importorskip("torch")
    from autotune import spaces, sweep

    def block():
        return tuning.get_config("k", "N8", DEFAULT, arch="gfx1100")["BLOCK"]

    def setup_for(wrong_at):
        def setup(dev, dtype):
            def run():
                return torch.full((2,), 2.0 if block() == wrong_at else 1.0)
            run.case = wrong_at
            return run
        return setup

    # current config BLOCK 16: 10 ms on a, 1 ms on b
    times = {"a": {16: 10.0, 128: 5.0, 256: 9.0, 512: 1.0},
             "b": {16: 1.0, 128: 0.9, 256: 0.5, 512: 0.1}}

    def timer(fn, warmup, rep):
        return times["a" if fn.case == 1 else "b"][block()]

    pa = spaces.Problem("k", "k", "a", {"N": 8}, setup_for(1))
    pb = spaces.Problem("k", "k", "b", {"N": 8}, setup_for(512))   # BLOCK 512 is wrong on b
    other = spaces.Problem("k", "k", "c", {"N": 64}, setup_for(1))
    groups = sweep.group_by_bucket([pa, other, pb])
    assert [[p.name for p in g] for g in groups] == [["a", "b"], ["c"]]
    cands = [{"BLOCK": b} for b in (128, 256, 512)]
    r = sweep.sweep_bucket(groups[0], cands, "cpu", torch.float32, warmup=1, rep=1, timer=timer)
    # 128: (0.5 + 0.9) / 2 = 0.7; 256: (0.9 + 0.5) / 2 = 0.7 (not better: the first stays)
    assert r["best"] == {"BLOCK": 128} and r["best_score"] == pytest.approx(0.7)
    assert r["best_ms"] == [5.0, 0.9] and r["shipped_ms"] == [10.0, 1.0]
    assert [(c["BLOCK"], "(b)" in why) for c, why in r["rejected"]] == [(512, True)]


def test_sweep_table_is_read_back_as_user_table(tables, tmp_path, monkeypatch):
    from autotune import sweep

    t = sweep.new_table("gfx1100", "rdna3", "Radeon RX 7900 XTX", "2025-01-02")
    sweep.merge_entry(t, "k", tuning.bucket(N=8), {"BLOCK": 2048, "source": t["source"]})
    p = tmp_path / "mine.json"
    p.write_text(json.dumps(t))
    monkeypatch.setenv("FORGE_TUNING_TABLE", str(p))
    r = tuning.resolve("k", "N8", DEFAULT, arch="gfx1100")
    assert (r.level, r.config["BLOCK"], r.source) == ("user", 2048, "sweep 2025-01-02 Radeon RX 7900 XTX")


def test_occupancy_formulas():
    from autotune import report

    # gfx942: 512 VGPRs per lane, granule 8, cap 8 waves/SIMD
    assert report.amd_waves_per_simd("gfx942", 64, 0, 4) == 8
    assert report.amd_waves_per_simd("gfx942", 169, 0, 4) == 2      # ceil8(169)=176 -> 512//176
    assert report.amd_waves_per_simd("gfx942", 512, 0, 4) == 1
    # LDS: 64 KiB per CU; 32 KiB per workgroup -> 2 groups x 4 waves over 4 SIMDs = 2
    assert report.amd_waves_per_simd("gfx942", 64, 32 * 1024, 4) == 2
    # gfx1100 wave32: 1536 VGPRs per lane, granule 24, cap 16
    assert report.amd_waves_per_simd("gfx1100", 93, 0, 4) == 16     # ceil24(93)=96 -> 16
    assert report.amd_waves_per_simd("gfx1100", 256, 0, 4) == 5     # ceil24(256)=264 -> 5
    # sm90: 255 regs x 32 -> 8192 per warp (256-granular); 8 warps -> 65536 -> one block
    assert report.sm90_warps_per_sm(255, 0, 8) == 8
    assert report.sm90_warps_per_sm(32, 0, 4) == 64
    assert report.sm90_warps_per_sm(32, 100 * 1024, 4) == 8         # 228 KiB // 101 KiB = 2 blocks


def test_inspect_amd_reads_the_metadata():
    from autotune import report

    asm = """
    v_mfma_f32_16x16x16_bf16 v[0:3], v[4:5], v[6:7], v[0:3]
    ; NumVGPRsForWavesPerEU: 120
    ; Occupancy: 4
    .sgpr_count:     44
    .sgpr_spill_count: 3
    .vgpr_count:     100
    .agpr_count:     20
    .vgpr_spill_count: 0
    .private_segment_fixed_size: 16
    .group_segment_fixed_size: 0
    """
    r = report.inspect_amd(asm, 8192, "gfx942", 4)
    assert (r["vgprs"], r["agprs"], r["sgprs"], r["scratch"], r["lds"], r["mfma"], r["wmma"]) == \
        (100, 20, 44, 16, 8192, 1, 0)
    assert (r["sgpr_spills"], r["vgpr_spills"], r["llvm_occupancy"]) == (3, 0, 4)
    assert r["waves_per_simd"] == 4  # 512 // 120 -> 4; LDS: 8 groups x 4 / 4 = 8


def test_spec_kernel_names():
    from autotune import report

    assert report.spec_kernel({"name": "attn_prefill_d128_fp16"}) == "attn_prefill"
    assert report.spec_kernel({"name": "_linear_gemv_kernel[Q4_K,bf16,T1]"}) == "linear_gemv"
    assert report.spec_kernel({"name": "_dequant_kernel[Q6_K]"}) == "dequant"
    assert report.spec_kernel({"name": "whatever", "kernel": "rope"}) == "rope"
    assert report.spec_type({"name": "_linear_gemv_kernel[Q4_K,bf16,T1]"}) == "Q4_K"


def test_spec_target_filter_and_default_attrs():
    from autotune import report

    cdna = {"name": "_linear_gemv_kernel[Q4_K,bf16,T1,cdna]"}
    assert [t for t in report.TARGETS if report.spec_runs_on(cdna, t)] == ["gfx942"]
    rdna = {"name": "x[rdna]", "vendors": ("amd",)}
    assert [t for t in report.TARGETS if report.spec_runs_on(rdna, t)] == ["gfx1100"]
    nv = {"name": "x", "vendors": ("nvidia",)}
    assert [t for t in report.TARGETS if report.spec_runs_on(nv, t)] == ["sm90"]
    assert all(report.spec_runs_on({"name": "rms_norm_bf16"}, t) for t in report.TARGETS)
    assert report.spec_runs_on({"name": "x", "families": ("hopper",)}, "sm90")

    class Fn:  # what ASTSource needs of a JIT function here
        arg_names = ["x_ptr", "n", "out_ptr", "BLOCK"]

    spec = {"fn": Fn, "signature": {"x_ptr": "*bf16", "n": "i32", "out_ptr": "*fp32", "BLOCK": "constexpr"}}
    assert report.spec_attrs(spec) == {(0,): [["tt.divisibility", 16]], (2,): [["tt.divisibility", 16]]}
    spec["attrs"] = {}
    assert report.spec_attrs(spec) == {}


@pytest.mark.gpu
def test_sweep_on_the_gpu_keeps_current_keys_and_unswept_buckets(tmp_path, monkeypatch):
    """A real (tiny) GEMV sweep: the written entry carries the keys the space does not vary with
    their current values, the kernel's other buckets are copied in, and the table reads back as
    the user table with every unswept bucket resolving as before."""
    pytest.importorskip("torch")
    from autotune import sweep
    from forge.kernels import matmul

    info = device.detect()
    out = tmp_path / "t.json"
    tid = next(t for t, i in matmul.TYPES.items() if i.name == "Q4_K")
    probe = [(1, n, k) for n, k in ((4096, 14336), (14336, 4096), (128256, 4096), (2048, 2048))]
    before = [matmul._configs(tid, *d)[0] for d in probe]
    cur_cfg = matmul._configs(tid, 1, 4096, 4096)[0]
    real_timer = sweep._time_graph

    def timer(run, warmup, rep):
        """Times for real, then reports any candidate unlike the current config as faster than
        it, so that one is written (the test is about what gets written, not which wins)."""
        ms = real_timer(run, warmup, rep)
        cfg = matmul._configs(tid, 1, 4096, 4096)[0]
        same = all(cfg[k] == cur_cfg[k] for k in ("BLOCK_N", "num_warps", "SPLIT_K"))
        return ms if same else 1e-6

    monkeypatch.setattr(sweep, "_time_graph", timer)
    assert sweep.main(["--kernel", "linear_gemv", "--types", "Q4_K", "--shapes", "4096x4096",
                       "--max-candidates", "3", "--warmup", "2", "--rep", "10",
                       "--out", str(out)]) == 0
    t = json.loads(out.read_text())
    b = tuning.bucket(T=1, N=4096, K=4096)
    entry = t["kernels"]["linear_gemv.Q4_K"][b]
    assert entry["source"].startswith("sweep ")
    assert tuple(entry[k] for k in ("BLOCK_N", "num_warps", "SPLIT_K")) != \
        tuple(cur_cfg[k] for k in ("BLOCK_N", "num_warps", "SPLIT_K"))
    cur = sweep.current_entry("linear_gemv.Q4_K", b, info.arch)
    # the keys the space sets (BLOCK_N ... X_INT8, and ASYNC 0: its candidates are the Triton
    # GEMV's) are the candidate's; every other key keeps its current value
    from autotune import spaces
    varied = set().union(*spaces.space("linear_gemv", info.family, sub=matmul.gemv_block(tid),
                                       warp=info.warp_size, int8=True))
    assert {"BLOCK_N", "num_warps", "SPLIT_K"} <= varied
    for k in set(cur) - varied:
        assert entry[k] == cur[k], k
    served = tuning.serving_table("linear_gemv.Q4_K", info.arch)
    if served is not None:
        assert set(served[3]) <= set(t["kernels"]["linear_gemv.Q4_K"])
    monkeypatch.setenv("FORGE_TUNING_TABLE", str(out))
    tuning.clear_cache()
    after = [matmul._configs(tid, *d)[0] for d in probe]
    assert after == before
    tuning.clear_cache()


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", ["Q4_K", "Q8_0"])
def test_sweep_with_gemv_async_times_and_writes_the_async_kernel(tmp_path, monkeypatch, qtype):
    """--gemv-async: the shared-memory GEMV's candidates run for real (the kernel launches),
    and one reported fastest is written with its keys, which linear then takes."""
    torch = pytest.importorskip("torch")
    from autotune import sweep
    from autotune.spaces import _qweight
    from forge.kernels import gemv_async, matmul

    if not gemv_async.supported():
        pytest.skip("this GPU has no shared-memory GEMV (NVIDIA sm80+ with Gluon)")
    out = tmp_path / "t.json"
    tid = next(t for t, i in matmul.TYPES.items() if i.name == qtype)
    real_timer = sweep._time_graph

    def timer(run, warmup, rep):
        ms = real_timer(run, warmup, rep)
        cfg = matmul._configs(tid, 1, 4096, 4096)[0]
        return 1e-6 if (cfg.get("ASYNC"), cfg.get("ASYNC_BN"), cfg.get("ASYNC_WARPS")) == \
            (3, 8, 2) else ms

    launches = []
    real_launch = gemv_async.launch
    monkeypatch.setattr(sweep, "_time_graph", timer)
    monkeypatch.setattr(gemv_async, "launch", lambda *a, **k: launches.append(a[6].get("ASYNC_BN"))
                        or real_launch(*a, **k))
    assert sweep.main(["--kernel", "linear_gemv", "--types", qtype, "--shapes", "4096x4096",
                       "--gemv-async", "3", "--warmup", "2", "--rep", "10",
                       "--out", str(out)]) == 0
    assert {2, 4, 8} <= set(launches)
    entry = json.loads(out.read_text())["kernels"][f"linear_gemv.{qtype}"][
        tuning.bucket(T=1, N=4096, K=4096)]
    assert (entry["ASYNC"], entry["ASYNC_BN"], entry["ASYNC_WARPS"], entry["SPLIT_K"]) == (3, 8, 2, 1)
    monkeypatch.setenv("FORGE_TUNING_TABLE", str(out))
    tuning.clear_cache()
    matmul.clear_config_cache()
    try:
        launches.clear()
        x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
        w, _ = _qweight(torch, qtype, 4096, 4096, x.device)
        matmul.linear(x, w)
        assert launches == [8]
    finally:
        tuning.clear_cache()
        matmul.clear_config_cache()


@pytest.mark.gpu
@pytest.mark.parametrize("to_user", [False, True])
def test_sweep_starts_from_the_user_table(tmp_path, monkeypatch, to_user):
    """A new --out table starts as a copy of the user table lookup reads ($FORGE_TUNING_TABLE
    here), so its other kernels stay; with no --out the sweep writes that table itself (progress
    beside it while it runs, no progress file left behind)."""
    pytest.importorskip("torch")
    from autotune import sweep
    from forge.kernels import matmul

    info = device.detect()
    user = tmp_path / "user.json"
    mine = {"BLOCK_N": 2, "num_warps": 2, "source": "mine"}
    _write(user, {"arch": info.arch, "kernels": {"rms_norm": {"D4096": mine}}})
    monkeypatch.setenv("FORGE_TUNING_TABLE", str(user))
    tuning.clear_cache()
    tid = next(t for t, i in matmul.TYPES.items() if i.name == "Q8_0")
    cur = matmul._configs(tid, 1, 4096, 4096)[0]

    def timer(run, warmup, rep):   # any candidate unlike the current config wins
        run()
        cfg = matmul._configs(tid, 1, 4096, 4096)[0]
        return 1.0 if all(cfg[k] == cur[k] for k in ("BLOCK_N", "num_warps", "SPLIT_K")) else 0.5

    monkeypatch.setattr(sweep, "_time_graph", timer)
    out = user if to_user else tmp_path / "new.json"
    argv = ["--kernel", "linear_gemv", "--types", "Q8_0", "--shapes", "4096x4096",
            "--max-candidates", "2"] + ([] if to_user else ["--out", str(out)])
    assert sweep.main(argv) == 0
    t = json.loads(out.read_text())
    assert t["kernels"]["rms_norm"]["D4096"] == mine
    assert t["kernels"]["linear_gemv.Q8_0"][tuning.bucket(T=1, N=4096, K=4096)]["source"].startswith("sweep")
    assert not list(tmp_path.glob("*.partial.json"))
    if not to_user:
        assert "linear_gemv.Q8_0" not in json.loads(user.read_text())["kernels"]


def test_sweep_start_table(tmp_path):
    """The table a sweep starts from: the output table; else a copy of the user table lookup
    reads (not one lookup ignores); else a new one. An output table that is invalid or for
    another arch stops the sweep (it would be overwritten)."""
    from autotune import sweep

    out, user = tmp_path / "out.json", tmp_path / "user.json"
    args = ("sm90", "hopper", "H100", "2026-11-23")
    t, how = sweep.start_table(out, user, *args)
    assert t["kernels"] == {} and how == "" and t["arch"] == "sm90"
    _write(user, {"arch": "sm90", "kernels": {"k": {"*": {"BLOCK": 8}}}})
    t, how = sweep.start_table(out, user, *args)
    assert t["kernels"]["k"]["*"]["BLOCK"] == 8 and "copy of the user table" in how
    for bad in ({"arch": "gfx942", "kernels": {}}, {"arch": "sm90", "kernels": {"k": {"*": {"BLOCK": 3}}}}):
        _write(user, bad)
        t, how = sweep.start_table(out, user, *args)
        assert t["kernels"] == {} and "ignores" in how
        _write(out, bad)
        with pytest.raises(ValueError, match="out.json"):
            sweep.start_table(out, user, *args)
        out.unlink()
    _write(out, {"arch": None, "kernels": {"j": {"*": {"BLOCK": 2}}}})
    t, how = sweep.start_table(out, user, *args)
    assert t["kernels"]["j"]["*"]["BLOCK"] == 2 and how == "" and t["family"] == "hopper"
    out.write_text("{not json")
    with pytest.raises(ValueError, match="out.json"):
        sweep.start_table(out, user, *args)


def test_sweep_main_on_fake_problems(typed_tables, tmp_path, monkeypatch):
    """sweep.main end to end on the CPU with a fake device, problems and timer: into the user
    table ($FORGE_TUNING_TABLE), a bucket whose winner beats the current config by --min-gain
    is written over the current entry's keys, the serving entries are copied in first, a bucket
    without such a win is left alone, and no progress file remains."""
    torch = pytest.importorskip("torch")
    from autotune import spaces, sweep

    info = device.DeviceInfo("nvidia", "sm90", "hopper", 32, 227 << 10, 132, 80 << 30, "Fake H100")
    monkeypatch.setattr(device, "detect", lambda: info)
    user = tmp_path / "user.json"
    _write(user, {"arch": "sm90", "kernels": {"rms_norm": {"D8": {"num_warps": 2}}}})
    monkeypatch.setenv("FORGE_TUNING_TABLE", str(user))
    tuning.clear_cache()
    default = {"BLOCK": 1, "PDL": 1, "X_PRE": 0, "num_warps": 1}

    def setup_for(n):
        def setup(dev, dtype):
            def run():
                return torch.ones(2)
            run.n = n
            return run
        return setup

    probs = [spaces.Problem("lin.Q4_K", "lin", f"N{n}", {"N": n}, setup_for(n)) for n in (4096, 16384)]
    monkeypatch.setattr(spaces, "problems", lambda kernel, types: probs)
    monkeypatch.setattr(spaces, "SWEEPABLE", spaces.SWEEPABLE + ("lin",))
    monkeypatch.setattr(spaces, "space", lambda *a, **k: [{"BLOCK": 64}, {"BLOCK": 128}])

    def timer(run, warmup, rep):   # BLOCK 128 wins by 50% at N4096, by 0.5% at N16384
        block = tuning.get_config("lin.Q4_K", f"N{run.n}", default, arch="sm90")["BLOCK"]
        base = 10.0
        return {128: base * (0.5 if run.n == 4096 else 0.995)}.get(block, base)

    monkeypatch.setattr(sweep, "_time", timer)
    assert sweep.main(["--kernel", "lin"]) == 0
    t = json.loads(user.read_text())
    assert t["kernels"]["rms_norm"] == {"D8": {"num_warps": 2}}              # kept
    q = t["kernels"]["lin.Q4_K"]
    assert q["N4096"]["BLOCK"] == 128 and q["N4096"]["source"].startswith("sweep ")
    assert q["N4096"]["PDL"] == 1 and q["N4096"]["X_PRE"] == 1               # current keys kept
    assert q["N16384"] == {"PDL": 0, "source": "test",                        # copied, not swept
                           "comment": "copied from forge/kernels/configs/sm90.json (arch) by "
                                      "autotune.sweep: not timed by the sweep"}
    assert not list(tmp_path.glob("*.partial.json"))
