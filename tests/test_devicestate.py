"""Device state with every benchmark: parsing of recorded tool outputs, fake sysfs trees, a fake NVML and jtop,
a fake tegrastats process, and the real CPU path of this machine."""
from __future__ import annotations

import os
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

import fake_pynvml
from omniad_edge import devicestate
from omniad_edge.devicestate import Recorder, System

ORIN = ("12-02-2026 16:00:00 RAM 2011/7620MB (lfb 1x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@729,1%@729,0%@729,"
        "0%@729,off,off] EMC_FREQ 7%@2133 GR3D_FREQ 45%@[305] NVENC off NVDEC off VIC off APE 200 cpu@45.5C "
        "soc2@44.1C gpu@45.2C tj@47.5C VDD_IN 4356mW/4356mW VDD_CPU_GPU_CV 480mW/480mW VDD_SOC 1360mW/1360mW")
NANO = ("RAM 1527/3964MB (lfb 95x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU [8%@1479,3%@1479,"
        "4%@1479,2%@1479] EMC_FREQ 3%@1600 GR3D_FREQ 0%@76 APE 25 PLL@29C CPU@31.5C PMIC@100C GPU@30.5C "
        "thermal@-256C POM_5V_IN 2557/2557 POM_5V_GPU 40/40 POM_5V_CPU 442/442")
XAVIER = ("RAM 3000/31920MB CPU [1%@1190,off] EMC_FREQ 0% GR3D_FREQ 0%@318 AO@36C GPU@35.5C GPU 0mW/0mW "
          "VDD_GPU 152/152 VDD_CPU 610/610 VDD_SOC 1220/1220")


# -- recorded outputs ------------------------------------------------------------------------------------------
def test_parse_tegrastats_orin_jetpack6():
    s = devicestate.parse_tegrastats(ORIN)
    assert s["power_mw"] == 4356 and s["power_source"] == "VDD_IN"
    assert s["rails_mw"] == {"VDD_IN": 4356, "VDD_CPU_GPU_CV": 480, "VDD_SOC": 1360}
    assert (s["emc_load_pct"], s["emc_freq_mhz"], s["gpu_load_pct"], s["gpu_freq_mhz"]) == (7, 2133, 45, 305)
    assert s["temperature_c"] == {"cpu": 45.5, "soc2": 44.1, "gpu": 45.2, "tj": 47.5}


def test_parse_tegrastats_nano_jetpack4_and_a_board_without_input_rail():
    s = devicestate.parse_tegrastats(NANO)
    assert s["power_mw"] == 2557 and s["power_source"] == "POM_5V_IN"
    assert (s["emc_freq_mhz"], s["gpu_freq_mhz"]) == (1600, 76)
    assert "thermal" not in s["temperature_c"] and s["temperature_c"]["GPU"] == 30.5  # -256 C: sensor offline
    s = devicestate.parse_tegrastats(XAVIER)
    assert s["power_mw"] == 152 + 610 + 1220 and s["power_source"] == "sum of rails"
    assert s["emc_load_pct"] == 0 and "emc_freq_mhz" not in s  # no frequency printed: none invented
    assert devicestate.parse_tegrastats("garbage line") == {}


def test_parse_nvpmodel():
    assert devicestate.parse_nvpmodel("NV Power Mode: MAXN\n0\n") == {"name": "MAXN", "id": 0}
    assert devicestate.parse_nvpmodel("NVPM WARN: ...\nNV Power Mode: 15W\n2") == {"name": "15W", "id": 2}
    assert devicestate.parse_nvpmodel("NV Power Mode: 7W_AI") == {"name": "7W_AI", "id": None}
    assert devicestate.parse_nvpmodel("nvpmodel: permission denied") is None


# -- fake sysfs trees ------------------------------------------------------------------------------------------
def _write(root: Path, files: dict):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(str(text))


def _cpus(root, n=2, low=729600, high=1510400, governor="schedutil", cur=1113600):
    _write(root, {f"sys/devices/system/cpu/cpu{i}/cpufreq/{k}": v for i in range(n) for k, v in
                  {"scaling_cur_freq": cur, "scaling_min_freq": low, "scaling_max_freq": high,
                   "scaling_governor": governor}.items()})
    _write(root, {"sys/devices/system/cpu/cpufreq/policy0/x": "not a cpu"})  # ignored: not cpuN/cpufreq


def _jetson(root, locked: bool):
    _write(root, {"etc/nv_tegra_release": "# R36 (release), REVISION: 4.0",
                  "proc/device-tree/model": "NVIDIA Jetson Orin Nano Developer Kit\x00",
                  "sys/class/thermal/thermal_zone0/type": "cpu-thermal",
                  "sys/class/thermal/thermal_zone0/temp": "45500",
                  "sys/class/devfreq/17000000.gpu/cur_freq": "624750000",
                  "sys/class/devfreq/17000000.gpu/min_freq": "624750000" if locked else "306000000",
                  "sys/class/devfreq/17000000.gpu/max_freq": "624750000",
                  "sys/class/devfreq/17000000.gpu/governor": "nvhost_podgov",
                  "sys/class/devfreq/15340000.vic/cur_freq": "1"})
    _cpus(root, 6, low=1510400 if locked else 729600, high=1510400)


def _nvpmodel(argv):
    assert argv == ["nvpmodel", "-q"]
    return 0, "NV Power Mode: 15W\n0\n"


def test_jetson_with_clocks_locked(tmp_path):
    _jetson(tmp_path, locked=True)
    snap = devicestate.snapshot(System(tmp_path, run=_nvpmodel), nvml=False)
    assert snap["kind"] == "jetson"
    j = snap["jetson"]
    assert j["power_mode"] == {"name": "15W", "id": 0} and j["clocks_locked"] is True
    assert j["gpu_freq_mhz"]["cur"] == pytest.approx(624.75) and j["gpu_freq_mhz"]["node"] == "17000000.gpu"
    assert snap["cpu"]["temperature_c"] == {"cpu-thermal": 45.5}
    assert "emc_freq_mhz" not in j  # the bpmp debugfs rate is absent here (root only): not invented
    assert not [w for w in devicestate.clock_warnings(snap) if "clock" in w]


def test_jetson_not_locked_warns_and_names_the_fix(tmp_path):
    _jetson(tmp_path, locked=False)
    snap = devicestate.snapshot(System(tmp_path, run=_nvpmodel), nvml=False)
    assert snap["jetson"]["clocks_locked"] is False
    (warning,) = devicestate.clock_warnings(snap)
    assert "not locked" in warning and "15W" in warning and "jetson_clocks" in warning


def test_jetson_missing_sources_are_reported_not_invented(tmp_path):
    _write(tmp_path, {"etc/nv_tegra_release": "# R35"})
    snap = devicestate.snapshot(System(tmp_path, run=lambda argv: "`nvpmodel` not found on PATH"), nvml=False)
    j, missing = snap["jetson"], snap["missing"]
    assert "power_mode" not in j and "gpu_freq_mhz" not in j and j["clocks_locked"] is None
    assert missing["power_mode"] == "`nvpmodel` not found on PATH"
    assert "devfreq" in missing["gpu_freq"] and "cpufreq" in missing and "temperature" in missing
    assert any("cannot tell" in w for w in devicestate.clock_warnings(snap))


def test_cpu_governor_and_rapl_energy(tmp_path):
    _cpus(tmp_path, 2)
    _write(tmp_path, {"sys/class/powercap/intel-rapl:0/energy_uj": "1000000"})
    system = System(tmp_path)
    rec = Recorder(system, nvml=False)
    start = rec.start()
    assert start["kind"] == "cpu" and start["cpu"]["cpu_clocks_fixed"] is False
    assert start["cpu"]["cpu_freq_mhz"]["cur"] == [1113.6, 1113.6] and start["cpu"]["cpu_governor"] == ["schedutil"]
    _write(tmp_path, {"sys/class/powercap/intel-rapl:0/energy_uj": "3500000"})
    result = rec.stop(frames=5)
    assert result["energy"]["joules"] == pytest.approx(2.5) and result["energy"]["per_frame_j"] == pytest.approx(0.5)
    assert "RAPL" in result["energy"]["source"]
    assert any("frequency scaling is active" in w and "schedutil" in w for w in result["warnings"])
    _cpus(tmp_path, 2, governor="performance")
    snap = devicestate.snapshot(system, nvml=False)
    assert snap["cpu"]["cpu_clocks_fixed"] is True and not devicestate.clock_warnings(snap)


def test_a_wrapped_or_missing_energy_counter_gives_no_energy(tmp_path):
    _write(tmp_path, {"sys/class/powercap/intel-rapl:0/energy_uj": "900"})
    rec = Recorder(System(tmp_path), nvml=False)
    rec.start()
    _write(tmp_path, {"sys/class/powercap/intel-rapl:0/energy_uj": "100"})  # wrapped: not guessed around
    result = rec.stop(frames=2)
    assert result["energy"] is None and "RAPL" in result["missing"]["energy"]
    with pytest.raises(RuntimeError, match="before start"):
        rec.stop(frames=2)


def test_load_warning():
    snap = {"kind": "cpu", "cpu": {"load_average": [3.5, 2.0, 1.0], "cpu_clocks_fixed": True}}
    assert devicestate.clock_warnings(snap, usable_cores=2) == [
        "load average 3.50 on 2 usable cores: other work shares the CPU"]
    assert devicestate.clock_warnings(snap, usable_cores=16) == []


# -- tegrastats as a process -----------------------------------------------------------------------------------
def test_recorder_integrates_tegrastats_power_into_energy_per_frame(tmp_path):
    _jetson(tmp_path, locked=True)
    script = tmp_path / "tegrastats.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        while True:
            print({ORIN!r}.replace("VDD_IN 4356mW", "VDD_IN 5000mW"), flush=True)
            time.sleep(0.02)
    """))
    rec = Recorder(System(tmp_path, run=_nvpmodel), nvml=False, use_jtop=False,
                   tegrastats=[sys.executable, str(script)])
    rec.start()
    time.sleep(0.4)
    result = rec.stop(frames=4)
    assert result["kind"] == "jetson" and result["energy"] is not None
    # constant 5 W over the recorded interval (ends held at the nearest sample): exactly 5 W x seconds
    assert result["energy"]["joules"] == pytest.approx(5.0 * result["seconds"], rel=1e-6)
    assert result["energy"]["per_frame_j"] == pytest.approx(result["energy"]["joules"] / 4)
    assert result["energy"]["source"].startswith("VDD_IN, ")
    assert result["samples"]["emc_freq_mhz"]["mean"] == 2133 and result["samples"]["gpu_freq_mhz"]["max"] == 305
    assert rec._sampler.proc.poll() is not None  # the tegrastats process was ended


def test_recorder_without_tegrastats_reports_no_energy(tmp_path):
    _jetson(tmp_path, locked=True)
    rec = Recorder(System(tmp_path, run=_nvpmodel), nvml=False, use_jtop=False,
                   tegrastats=["no-such-tegrastats-binary"])
    rec.start()
    result = rec.stop(frames=1)
    assert result["energy"] is None
    assert "not found on PATH" in result["missing"]["power_samples"]
    assert "no board power samples" in result["missing"]["energy"]


# -- jetson-stats (jtop) ---------------------------------------------------------------------------------------
class _FakeJtop:
    fail = None
    instances = []

    def __init__(self, interval=1.0):
        self.interval, self.closed = interval, False
        self.nvpmodel = types.SimpleNamespace(name="MAXN_SUPER", id=2)
        self.jetson_clocks = True
        self.gpu = {"gpu": {"freq": {"cur": 1020000, "min": 1020000, "max": 1020000, "governor": "nvhost_podgov"}}}
        self.memory = {"RAM": {}, "EMC": {"online": True, "cur": 3199000}}
        self.temperature = {"cpu": {"online": True, "temp": 50.5}, "cv0": {"online": False, "temp": -256}}
        self.power = {"rail": {}, "tot": {"power": 8000, "avg": 7000}}
        _FakeJtop.instances.append(self)

    def start(self):
        if self.fail:
            raise RuntimeError(self.fail)

    def close(self):
        self.closed = True


@pytest.fixture
def fake_jtop(monkeypatch):
    _FakeJtop.fail, _FakeJtop.instances = None, []
    monkeypatch.setitem(sys.modules, "jtop", types.SimpleNamespace(jtop=_FakeJtop))
    return _FakeJtop


def test_jtop_supplies_the_jetson_state_and_power(tmp_path, fake_jtop):
    _jetson(tmp_path, locked=False)  # sysfs says unlocked; jtop is asked instead and says locked
    rec = Recorder(System(tmp_path, run=lambda argv: pytest.fail("jtop replaces the commands")), nvml=False,
                   interval_s=0.02)
    start = rec.start()
    j = start["jetson"]
    assert j["power_mode"] == {"name": "MAXN_SUPER", "id": 2} and j["clocks_locked"] is True
    assert j["gpu_freq_mhz"]["cur"] == 1020 and j["emc_freq_mhz"] == 3199 and j["temperature_c"] == {"cpu": 50.5}
    time.sleep(0.15)
    result = rec.stop(frames=2)
    assert result["energy"]["joules"] == pytest.approx(8.0 * result["seconds"], rel=1e-6)
    assert fake_jtop.instances[0].closed and "jtop" not in result["missing"]


def test_jtop_without_its_service_falls_back_to_tegrastats(tmp_path, fake_jtop):
    fake_jtop.fail = "The jtop.service is not active"
    _jetson(tmp_path, locked=True)
    rec = Recorder(System(tmp_path, run=_nvpmodel), nvml=False, tegrastats=["no-such-tegrastats-binary"])
    start = rec.start()
    assert "jtop.service is not active" in start["missing"]["jtop"] and "tegrastats" in start["missing"]["jtop"]
    assert start["jetson"]["power_mode"]["name"] == "15W"  # from nvpmodel, the fallback
    rec.stop(frames=1)


def test_jtop_not_installed_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jtop", None)
    _jetson(tmp_path, locked=True)
    rec = Recorder(System(tmp_path, run=_nvpmodel), nvml=False, tegrastats=["no-such-tegrastats-binary"])
    assert "omniad-edge[jetson]" in rec.start()["missing"]["jtop"]
    rec.stop(frames=1)


# -- NVML ------------------------------------------------------------------------------------------------------
@pytest.fixture
def nvml(monkeypatch):
    fake_pynvml.reset()
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml)
    return fake_pynvml


def test_nvml_clocks_power_memory_and_energy(tmp_path, nvml):
    rec = Recorder(System(tmp_path), usable_cores=64)
    start = rec.start()
    gpu = start["gpu"]
    assert start["kind"] == "nvidia-gpu" and gpu["name"] == "NVIDIA GeForce RTX 4090"
    assert (gpu["graphics_clock_mhz"], gpu["graphics_clock_max_mhz"], gpu["memory_clock_mhz"]) == (2520, 3105, 10501)
    assert gpu["power_w"] == 65.0 and gpu["power_limit_w"] == 450.0 and gpu["performance_state"] == "P2"
    assert gpu["memory_used_mib"] == 1024 and gpu["memory_total_mib"] == 24 * 1024 and gpu["temperature_c"] == 41
    result = rec.stop(frames=9)
    assert result["energy"] == {"joules": pytest.approx(450.0), "per_frame_j": pytest.approx(50.0),
                                "source": "NVML total energy counter (GPU board only)"}
    assert any("does not report whether the GPU clocks are locked" in w for w in result["warnings"])
    assert not any("moved" in w for w in result["warnings"])
    assert nvml.state.init_calls == nvml.state.shutdown_calls == 2  # one session per snapshot, each closed


def test_nvml_clock_change_and_unsupported_sensors(tmp_path, nvml):
    nvml.reset(gpus=[nvml.FakeGPU(graphics=(2520.0, 1800.0))],
               unsupported={"nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage"})
    rec = Recorder(System(tmp_path))
    start = rec.start()
    assert "power_w" not in start["gpu"] and start["missing"]["gpu.power_w"] == "NVML: Not Supported"
    result = rec.stop(frames=3)
    assert result["energy"] is None and "no NVML energy counter" in result["missing"]["energy"]
    assert "GPU graphics clock moved during the run (2520 -> 1800 MHz)" in result["warnings"]


def test_nvml_without_driver_or_gpu_or_package(tmp_path, nvml, monkeypatch):
    nvml.reset(library_missing=True)
    snap = devicestate.snapshot(System(tmp_path))
    assert snap["kind"] == "cpu" and "NVML could not start" in snap["missing"]["gpu"]
    assert "NVML Shared Library Not Found" in snap["missing"]["gpu"]
    nvml.reset(gpus=[])
    snap = devicestate.snapshot(System(tmp_path))
    assert "found no GPU 0" in snap["missing"]["gpu"] and nvml.state.shutdown_calls == 1
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert "omniad-edge[nvml]" in devicestate.snapshot(System(tmp_path))["missing"]["gpu"]


# -- this machine, for real ------------------------------------------------------------------------------------
def test_the_real_cpu_path():
    before = os.getloadavg()
    result_rec = Recorder(usable_cores=len(os.sched_getaffinity(0)))
    start = result_rec.start()
    result = result_rec.stop(frames=1)
    after = os.getloadavg()
    cpu = start["cpu"]
    assert min(before[0], after[0]) - 0.01 <= cpu["load_average"][0] <= max(before[0], after[0]) + 0.01
    has_cpufreq = Path("/sys/devices/system/cpu/cpu0/cpufreq").is_dir()
    assert cpu["cpu_freq_mhz"]["source"] == ("sysfs cpufreq" if has_cpufreq else "/proc/cpuinfo")
    assert all(f is None or 10 < f < 10_000 for f in cpu["cpu_freq_mhz"]["cur"])
    if not has_cpufreq:
        assert "cpufreq" in start["missing"] and cpu["cpu_clocks_fixed"] is None
        assert any("CPU clock state unknown" in w for w in result["warnings"])
    if start["kind"] == "cpu":
        assert "gpu" in start["missing"]  # no NVIDIA GPU reachable: said, not invented
    if not Path("/sys/class/powercap/intel-rapl:0/energy_uj").exists():
        assert result["energy"] is None and "RAPL" in result["missing"]["energy"]
