"""forge.runtime.device with fake torch device properties (CPU only): arch strings, families,
sanity checks with warnings, the FORGE_ARCH override, caching, no-torch / no-GPU paths."""
from __future__ import annotations

import sys
import types
import warnings

import pytest

from forge.runtime import device

KiB = 1024
GiB = 1024**3


def props(**kw):
    base = dict(name="Fake GPU", major=9, minor=0, multi_processor_count=132, total_memory=80 * GiB,
                warp_size=32, shared_memory_per_block=48 * KiB, shared_memory_per_block_optin=227 * KiB,
                gcnArchName="")
    base.update(kw)
    return types.SimpleNamespace(**base)


MI300 = dict(name="AMD Instinct MI300X", major=9, minor=4, gcnArchName="gfx942:sramecc+:xnack-",
             warp_size=64, multi_processor_count=304, shared_memory_per_block=64 * KiB,
             shared_memory_per_block_optin=64 * KiB, total_memory=192 * GiB)
NAVI31 = dict(name="Radeon RX 7900 XTX", major=11, minor=0, gcnArchName="gfx1100", warp_size=32,
              multi_processor_count=96, shared_memory_per_block=64 * KiB,
              shared_memory_per_block_optin=64 * KiB, total_memory=24 * GiB)


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("FORGE_ARCH", raising=False)
    device.detect.cache_clear()
    yield
    device.detect.cache_clear()


def no_warnings(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*a, **kw)


# ---------------------------------------------------------------------------------------------
# pure helpers


@pytest.mark.parametrize("arch,vendor,family", [
    ("sm90", "nvidia", "hopper"), ("sm90a", "nvidia", "hopper"), ("sm80", "nvidia", "ampere"),
    ("sm86", "nvidia", "ampere"), ("sm89", "nvidia", "ada"), ("sm75", "nvidia", "turing"),
    ("sm70", "nvidia", "volta"), ("sm100", "nvidia", "blackwell"), ("sm120", "nvidia", "blackwell"),
    ("gfx942", "amd", "cdna3"), ("gfx940", "amd", "cdna3"), ("gfx90a", "amd", "cdna2"),
    ("gfx908", "amd", "cdna1"), ("gfx950", "amd", "cdna4"), ("gfx1100", "amd", "rdna3"),
    ("gfx1101", "amd", "rdna3"), ("gfx1151", "amd", "rdna3"), ("gfx1030", "amd", "rdna2"),
    ("gfx1201", "amd", "rdna4"), ("gfx906", "amd", "gcn5"),
    ("cpu", None, None), ("", None, None), ("gfx", None, None), ("sm9", None, None),
    ("gfx942:sramecc+", None, None), ("sm_90", None, None),
])
def test_vendor_and_family(arch, vendor, family):
    assert device.vendor_of(arch) == vendor
    assert device.family_of(arch) == family


def test_family_defaults_are_sane():
    for fam, d in device.FAMILY_DEFAULTS.items():
        assert d.warp_size in device.WARP_SIZES, fam
        assert device.LDS_RANGE[0] <= d.lds_bytes <= device.LDS_RANGE[1], fam
        assert device.CU_RANGE[0] <= d.num_cus <= device.CU_RANGE[1], fam
    assert device.family_defaults("gfx942").warp_size == 64
    assert device.family_defaults("gfx1100").warp_size == 32
    assert device.family_defaults("sm86").lds_bytes == 99 * KiB


# ---------------------------------------------------------------------------------------------
# from_props


def test_cuda_hopper():
    info = no_warnings(device.from_props, props(), is_hip=False)
    assert info == device.DeviceInfo("nvidia", "sm90", "hopper", 32, 227 * KiB, 132, 80 * GiB, "Fake GPU")
    assert not info.is_amd


def test_cuda_without_optin_uses_family_maximum():
    p = props(major=8, minor=0)
    del p.shared_memory_per_block_optin
    info = no_warnings(device.from_props, p, is_hip=False)
    assert (info.arch, info.family, info.lds_bytes) == ("sm80", "ampere", 163 * KiB)


def test_rocm_mi300_strips_features():
    info = no_warnings(device.from_props, props(**MI300), is_hip=True)
    assert (info.vendor, info.arch, info.family, info.warp_size, info.lds_bytes, info.num_cus) == \
        ("amd", "gfx942", "cdna3", 64, 64 * KiB, 304)
    assert info.is_amd and info.total_memory == 192 * GiB


def test_rocm_navi31_wave32():
    info = no_warnings(device.from_props, props(**NAVI31), is_hip=True)
    assert (info.arch, info.family, info.warp_size, info.lds_bytes) == ("gfx1100", "rdna3", 32, 64 * KiB)


@pytest.mark.parametrize("field,bad,attr,fallback", [
    ("warp_size", 48, "warp_size", 64),
    ("warp_size", 0, "warp_size", 64),
    ("warp_size", None, "warp_size", 64),
    ("shared_memory_per_block_optin", 8 * KiB, "lds_bytes", 64 * KiB),
    ("shared_memory_per_block_optin", 1 << 30, "lds_bytes", 64 * KiB),
    ("multi_processor_count", 0, "num_cus", 304),
    ("multi_processor_count", 5000, "num_cus", 304),
    ("multi_processor_count", "many", "num_cus", 304),
])
def test_bad_values_fall_back_with_warning(field, bad, attr, fallback):
    p = props(**MI300)
    setattr(p, field, bad)
    if field == "shared_memory_per_block_optin":
        p.shared_memory_per_block = bad
    with pytest.warns(RuntimeWarning, match=repr(bad) if not isinstance(bad, str) else "many"):
        info = device.from_props(p, is_hip=True)
    assert getattr(info, attr) == fallback


def test_nvidia_warp_64_is_rejected():
    with pytest.warns(RuntimeWarning, match="warp_size 64"):
        info = device.from_props(props(warp_size=64), is_hip=False)
    assert info.warp_size == 32


def test_bad_gcn_arch_name():
    with pytest.warns(RuntimeWarning, match="gcnArchName"):
        info = device.from_props(props(**{**MI300, "gcnArchName": "weird"}), is_hip=True)
    assert info.arch == "gfx942"


def test_bad_compute_capability():
    with pytest.warns(RuntimeWarning, match="compute capability"):
        info = device.from_props(props(major=-1, minor=3), is_hip=False)
    assert info.arch == "sm80"


def test_unknown_family_warns_and_uses_generic():
    with pytest.warns(RuntimeWarning, match="no known family"):
        info = device.from_props(props(**{**MI300, "gcnArchName": "gfx1300"}), is_hip=True)
    assert (info.arch, info.family, info.warp_size) == ("gfx1300", "unknown", 64)


def test_bad_total_memory():
    with pytest.warns(RuntimeWarning, match="total_memory"):
        info = device.from_props(props(total_memory=-5), is_hip=False)
    assert info.total_memory == 0


def test_override_same_vendor_keeps_hardware_numbers():
    info = no_warnings(device.from_props, props(), is_hip=False, override="sm80")
    assert (info.arch, info.family, info.num_cus, info.lds_bytes) == ("sm80", "ampere", 132, 227 * KiB)


def test_override_other_vendor_uses_family_defaults():
    info = no_warnings(device.from_props, props(), is_hip=False, override="gfx942")
    assert (info.vendor, info.arch, info.warp_size, info.lds_bytes, info.num_cus) == \
        ("amd", "gfx942", 64, 64 * KiB, 304)


def test_bad_override_is_ignored():
    with pytest.warns(RuntimeWarning, match="FORGE_ARCH"):
        info = device.from_props(props(), is_hip=False, override="tpu7")
    assert info.arch == "sm90"


# ---------------------------------------------------------------------------------------------
# detect() with a fake torch module


class FakeCuda:
    def __init__(self, p, available=True, free=(10 * GiB, 80 * GiB)):
        self.p, self.available, self.free, self.calls = p, available, free, 0

    def is_available(self):
        return self.available

    def current_device(self):
        return 0

    def get_device_properties(self, i):
        self.calls += 1
        return self.p

    def mem_get_info(self):
        return self.free


def fake_torch(monkeypatch, p, hip=None, **kw):
    t = types.ModuleType("torch")
    t.cuda = FakeCuda(p, **kw)
    t.version = types.SimpleNamespace(hip=hip, cuda=None if hip else "12.8")
    monkeypatch.setitem(sys.modules, "torch", t)
    return t


def test_detect_rocm_and_cache(monkeypatch):
    t = fake_torch(monkeypatch, props(**MI300), hip="6.4")
    info = device.detect()
    assert (info.vendor, info.arch, info.warp_size) == ("amd", "gfx942", 64)
    assert device.detect() is info and t.cuda.calls == 1
    assert device.current_arch() == "gfx942"
    assert device.free_memory() == (10 * GiB, 80 * GiB)


def test_detect_env_override(monkeypatch):
    fake_torch(monkeypatch, props(**NAVI31), hip="6.4")
    monkeypatch.setenv("FORGE_ARCH", "gfx1101")
    info = device.detect()
    assert (info.arch, info.family, info.num_cus) == ("gfx1101", "rdna3", 96)


def test_detect_no_gpu(monkeypatch):
    fake_torch(monkeypatch, props(), available=False)
    assert device.detect() is None
    assert device.current_arch() == "cpu"
    assert device.free_memory() == (0, 0)
    monkeypatch.setenv("FORGE_ARCH", "sm90")  # the override names an arch for lookup only
    assert device.current_arch() == "sm90" and device.detect() is None


def test_detect_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    assert device.detect() is None


def test_detect_broken_driver(monkeypatch):
    t = fake_torch(monkeypatch, props())

    def boom(i):
        raise RuntimeError("driver exploded")

    t.cuda.get_device_properties = boom
    with pytest.warns(RuntimeWarning, match="driver exploded"):
        assert device.detect() is None
