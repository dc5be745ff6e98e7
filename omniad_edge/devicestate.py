"""What a latency figure depends on besides the code: power mode, clocks, temperature, load and energy.

`Recorder.start()` before the measured frames and `Recorder.stop(frames)` after them give the device's state at
both ends, the energy spent in between (per frame), what could not be read, and warnings:

- Jetson (found by /etc/nv_tegra_release or the device tree's model): the power mode (`nvpmodel -q`), whether the
  clocks are locked (what `jetson_clocks` does: every CPU's and the GPU's minimum frequency raised to the maximum,
  read back from sysfs), GPU and EMC frequency, temperatures, and board power sampled through the run for energy
  per frame (`tegrastats`). With the `jetson` extra (jetson-stats) and its jtop service running, jtop supplies them
  instead (it reads the same sources without root).
- NVIDIA GPU (an RTX box, a server): clocks, power, memory, temperature and performance state through NVML (the
  `nvml` extra, nvidia-ml-py), energy from the driver's energy counter.
- Any machine: load average, CPU frequency and governor (sysfs cpufreq, else /proc/cpuinfo's current MHz),
  thermal zones, and package energy where Intel RAPL is readable.

Nothing is guessed: a source that cannot be read is named in `missing` with the reason, and its fields are absent.
`warnings` say when the device is not in a fixed-clock state or when that cannot be known: Jetson figures vary
several-fold with the power mode and the frequency governors.

All file and command access goes through `System` (a root directory and a command runner), so the parsing is tested
on recorded outputs; `jtop` and `pynvml` are imported lazily.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

__all__ = ["System", "Recorder", "snapshot", "cpu_state", "jetson_state", "nvml_state", "parse_tegrastats",
           "parse_nvpmodel", "is_jetson", "clock_warnings", "describe"]

log = logging.getLogger(__name__)

GPU_DEVFREQ = ("gpu", "ga10b", "gv11b", "gp10b", "gm20b", "gb10b")  # devfreq node names of Jetson GPUs
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")  # board input rails: the whole module's power where the board has one


class System:
    """Where state is read from: a filesystem root and a command runner (tests substitute both)."""

    def __init__(self, root: str | os.PathLike = "/", run: Callable | None = None, which: Callable = shutil.which):
        self.root = Path(root)
        self._run = run
        self._which = which

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def read(self, p: str | Path) -> str | None:
        """The stripped text of a file, None where it is absent or unreadable (sysfs files often need root)."""
        path = p if isinstance(p, Path) else self.path(p)
        try:
            return path.read_text(errors="replace").strip()
        except OSError:
            return None

    def glob(self, pattern: str) -> list[Path]:
        return sorted(self.root.glob(pattern.lstrip("/")))

    def command(self, argv: list[str], timeout: float = 5.0) -> tuple[int, str] | str:
        """(return code, stdout), or a string saying why the command could not run."""
        if self._run is not None:
            return self._run(argv)
        if self._which(argv[0]) is None:
            return f"`{argv[0]}` not found on PATH"
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{' '.join(argv)}` failed: {exc}"
        return done.returncode, done.stdout + done.stderr


def _num(text: str | None, scale: float = 1.0) -> float | None:
    try:
        return float(text) / scale if text is not None else None
    except ValueError:
        return None


# -- any machine -----------------------------------------------------------------------------------------------
def cpu_state(system: System) -> tuple[dict, dict]:
    """(state, missing): load average, CPU frequency and governor, thermal zones, RAPL energy counter."""
    state, missing = {}, {}
    try:
        state["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError as exc:
        missing["load_average"] = f"os.getloadavg() failed: {exc}"
    policies = [p for p in system.glob("sys/devices/system/cpu/cpu*/cpufreq") if re.fullmatch(r"cpu\d+", p.parent.name)]
    if policies:
        cur, low, high, governors = [], [], [], set()
        for p in policies:
            cur.append(_num(system.read(p / "scaling_cur_freq"), 1e3))
            low.append(_num(system.read(p / "scaling_min_freq"), 1e3))
            high.append(_num(system.read(p / "scaling_max_freq"), 1e3))
            governors.add(system.read(p / "scaling_governor"))
        governors.discard(None)
        state["cpu_freq_mhz"] = {"cur": cur, "min": low, "max": high, "source": "sysfs cpufreq"}
        state["cpu_governor"] = sorted(governors)
        if None in low or None in high:
            state["cpu_clocks_fixed"] = None
            missing["cpu_clock_limits"] = "cpufreq scaling_min_freq/scaling_max_freq unreadable"
        else:
            # min == max is what jetson_clocks writes; the performance governor requests the maximum all the time
            state["cpu_clocks_fixed"] = all(a == b for a, b in zip(low, high)) or governors == {"performance"}
    else:
        mhz = re.findall(r"^cpu MHz\s*:\s*([\d.]+)", system.read("proc/cpuinfo") or "", re.M)
        if mhz:
            state["cpu_freq_mhz"] = {"cur": [float(v) for v in mhz], "source": "/proc/cpuinfo"}
        else:
            missing["cpu_freq"] = "neither sysfs cpufreq nor 'cpu MHz' in /proc/cpuinfo"
        missing["cpufreq"] = ("no cpufreq in sysfs (a virtual machine, or a kernel without cpufreq): governor and "
                              "frequency limits unknown")
        state["cpu_clocks_fixed"] = None
    temps = {}
    for zone in system.glob("sys/class/thermal/thermal_zone*"):
        name, value = system.read(zone / "type"), _num(system.read(zone / "temp"), 1e3)
        if name and value is not None and value > -200:  # offline sensors read -256 C on Jetsons
            temps[name] = round(value, 1)
    if temps:
        state["temperature_c"] = temps
    else:
        missing["temperature"] = "no readable thermal zone in /sys/class/thermal"
    rapl = _num(system.read("sys/class/powercap/intel-rapl:0/energy_uj"))
    if rapl is not None:
        state["cpu_energy_uj"] = rapl
    else:
        missing["cpu_energy"] = "Intel RAPL (/sys/class/powercap/intel-rapl:0/energy_uj) absent or not readable"
    return state, missing


# -- Jetson ----------------------------------------------------------------------------------------------------
def is_jetson(system: System) -> bool:
    model = (system.read("proc/device-tree/model") or "").replace("\x00", "")
    return system.path("etc/nv_tegra_release").is_file() or "jetson" in model.lower()


def parse_nvpmodel(text: str) -> dict | None:
    """`nvpmodel -q` prints "NV Power Mode: <name>" then the mode's number on the next line."""
    m = re.search(r"NV Power Mode:\s*(\S[^\n]*)\n\s*(\d+)", text)
    if m:
        return {"name": m.group(1).strip(), "id": int(m.group(2))}
    m = re.search(r"NV Power Mode:\s*(\S[^\n]*)", text)
    return {"name": m.group(1).strip(), "id": None} if m else None


_RAIL = re.compile(r"\b((?:VDD|POM|VIN)_[A-Z0-9_]+) (\d+)(?:mW)?/(\d+)(?:mW)?")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")


def parse_tegrastats(line: str) -> dict:
    """One tegrastats line: power rails (mW, current), total power, EMC and GPU load / frequency, temperatures.

    Formats differ by JetPack ("VDD_IN 4356mW/4356mW" on JetPack 5-6, "POM_5V_IN 2557/2557" on JetPack 4;
    "GR3D_FREQ 0%@[305]" on Orin, "GR3D_FREQ 0%@76" before); fields a line lacks are absent."""
    out: dict = {}
    rails = {name: float(cur) for name, cur, _ in _RAIL.findall(line)}
    if rails:
        out["rails_mw"] = rails
        total = next((r for r in TOTAL_RAILS if r in rails), None)
        # without an input rail (AGX Xavier) the sum of the module's rails is the closest total
        out["power_mw"] = rails[total] if total else sum(rails.values())
        out["power_source"] = total or "sum of rails"
    m = re.search(r"EMC_FREQ (\d+)%(?:@(\d+))?", line)
    if m:
        out["emc_load_pct"] = float(m.group(1))
        if m.group(2):
            out["emc_freq_mhz"] = float(m.group(2))
    m = re.search(r"GR3D_FREQ (\d+)%(?:@\[?(\d+))?", line)
    if m:
        out["gpu_load_pct"] = float(m.group(1))
        if m.group(2):
            out["gpu_freq_mhz"] = float(m.group(2))
    temps = {name: float(v) for name, v in _TEMP.findall(line) if float(v) > -200}
    if temps:
        out["temperature_c"] = temps
    return out


def _gpu_devfreq(system: System) -> Path | None:
    for node in system.glob("sys/class/devfreq/*"):
        if any(key in node.name.lower() for key in GPU_DEVFREQ):
            return node
    return None


def jetson_state(system: System, cpu: dict) -> tuple[dict, dict]:
    """(state, missing) of a Jetson from nvpmodel and sysfs; `cpu` is cpu_state's state (CPU clock limits)."""
    state, missing = {}, {}
    out = system.command(["nvpmodel", "-q"])
    mode = parse_nvpmodel(out[1]) if isinstance(out, tuple) else None
    if mode:
        state["power_mode"] = mode
    else:
        missing["power_mode"] = out if isinstance(out, str) else f"`nvpmodel -q` printed no power mode: {out[1][:200]!r}"
    node = _gpu_devfreq(system)
    gpu_fixed = None
    if node is None:
        missing["gpu_freq"] = "no GPU devfreq node under /sys/class/devfreq"
    else:
        freq = {k: _num(system.read(node / f"{k}_freq"), 1e6) for k in ("cur", "min", "max")}
        state["gpu_freq_mhz"] = {**freq, "governor": system.read(node / "governor"), "node": node.name}
        if freq["min"] is not None and freq["max"] is not None:
            gpu_fixed = freq["min"] == freq["max"]
    emc = _num(system.read("sys/kernel/debug/bpmp/debug/clk/emc/rate"), 1e6)
    if emc is not None:
        state["emc_freq_mhz"] = emc
    if gpu_fixed is None or cpu.get("cpu_clocks_fixed") is None:
        state["clocks_locked"] = None
    else:
        state["clocks_locked"] = gpu_fixed and bool(cpu["cpu_clocks_fixed"])
    return state, missing


def _jtop_state(jetson) -> dict:
    """The same fields from a running jtop client (jetson-stats)."""
    state = {}
    if jetson.nvpmodel is not None:
        state["power_mode"] = {"name": str(jetson.nvpmodel.name), "id": jetson.nvpmodel.id}
    if jetson.jetson_clocks is not None:
        state["clocks_locked"] = bool(jetson.jetson_clocks)
    gpus = list(jetson.gpu.values())
    if gpus:
        freq = gpus[0]["freq"]
        state["gpu_freq_mhz"] = {k: freq[k] / 1e3 for k in ("cur", "min", "max") if k in freq}
        state["gpu_freq_mhz"]["governor"] = freq.get("governor")
    emc = jetson.memory["EMC"] if "EMC" in jetson.memory else None
    if emc and emc.get("online", True) and "cur" in emc:
        state["emc_freq_mhz"] = emc["cur"] / 1e3
    temps = {k: float(v["temp"]) for k, v in jetson.temperature.items() if v.get("online", True) and v["temp"] > -200}
    if temps:
        state["temperature_c"] = temps
    total = jetson.power.get("tot", {})
    if "power" in total:
        state["power_mw"] = float(total["power"])
    return state


# -- NVIDIA GPU (NVML) -----------------------------------------------------------------------------------------
def nvml_state(pynvml, index: int = 0) -> tuple[dict, dict]:
    """(state, missing) of GPU `index` through an initialised pynvml; each field a GPU lacks is named in missing."""
    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    state, missing = {"index": index}, {}

    def get(name, fn, *args, convert=lambda v: v):
        try:
            state[name] = convert(fn(h, *args))
        except pynvml.NVMLError as exc:
            missing[f"gpu.{name}"] = f"NVML: {exc}"

    get("name", pynvml.nvmlDeviceGetName, convert=lambda v: v.decode() if isinstance(v, bytes) else str(v))
    clocks = {"graphics": pynvml.NVML_CLOCK_GRAPHICS, "sm": pynvml.NVML_CLOCK_SM, "memory": pynvml.NVML_CLOCK_MEM}
    for key, clock in clocks.items():
        get(f"{key}_clock_mhz", pynvml.nvmlDeviceGetClockInfo, clock, convert=float)
        get(f"{key}_clock_max_mhz", pynvml.nvmlDeviceGetMaxClockInfo, clock, convert=float)
    get("power_w", pynvml.nvmlDeviceGetPowerUsage, convert=lambda mw: mw / 1e3)
    get("power_limit_w", pynvml.nvmlDeviceGetEnforcedPowerLimit, convert=lambda mw: mw / 1e3)
    get("memory_used_mib", pynvml.nvmlDeviceGetMemoryInfo, convert=lambda m: m.used / 2**20)
    get("memory_total_mib", pynvml.nvmlDeviceGetMemoryInfo, convert=lambda m: m.total / 2**20)
    get("temperature_c", pynvml.nvmlDeviceGetTemperature, pynvml.NVML_TEMPERATURE_GPU, convert=float)
    get("performance_state", pynvml.nvmlDeviceGetPerformanceState, convert=lambda p: f"P{int(p)}")
    get("energy_mj", pynvml.nvmlDeviceGetTotalEnergyConsumption, convert=float)
    return state, missing


def _open_nvml():
    """(pynvml, None) initialised, or (None, why not)."""
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed (pip install 'omniad-edge[nvml]')"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"NVML could not start (no NVIDIA driver or GPU here?): {exc}"
    return pynvml, None


# -- one snapshot ----------------------------------------------------------------------------------------------
def snapshot(system: System | None = None, *, nvml: bool = True, gpu_index: int = 0, jtop=None) -> dict:
    """The device's state now: {"kind", "cpu", "jetson"?, "gpu"?, "missing"}; `jtop` is a started jtop client."""
    system = system or System()
    cpu, missing = cpu_state(system)
    snap = {"kind": "cpu", "cpu": cpu}
    if is_jetson(system):
        snap["kind"] = "jetson"
        if jtop is not None:
            snap["jetson"] = _jtop_state(jtop)
        else:
            snap["jetson"], more = jetson_state(system, cpu)
            missing.update(more)
    elif nvml:
        pynvml, why = _open_nvml()
        if pynvml is None:
            missing["gpu"] = why
        else:
            try:
                snap["gpu"], more = nvml_state(pynvml, gpu_index)
                snap["kind"] = "nvidia-gpu"
                missing.update(more)
            except pynvml.NVMLError as exc:
                missing["gpu"] = f"NVML found no GPU {gpu_index}: {exc}"
            finally:
                pynvml.nvmlShutdown()
    snap["missing"] = missing
    return snap


def clock_warnings(snap: dict, usable_cores: int | None = None) -> list[str]:
    """Why figures taken in this state may not repeat: clocks not fixed (or unknowable), a busy machine."""
    warnings = []
    kind, cpu = snap["kind"], snap["cpu"]
    if kind == "jetson":
        j = snap["jetson"]
        mode = j.get("power_mode", {}).get("name", "unknown")
        if j.get("clocks_locked") is False:
            warnings.append(f"Jetson clocks are not locked (power mode {mode}): DVFS moves the GPU, EMC and CPU "
                            "clocks and figures vary several-fold; run `sudo jetson_clocks` in a fixed "
                            "`nvpmodel -m N` mode before benchmarking")
        elif j.get("clocks_locked") is None:
            warnings.append(f"cannot tell whether the Jetson clocks are locked (power mode {mode}; GPU or CPU "
                            "frequency limits unreadable): read the figures as from an unfixed-clock device")
    elif kind == "nvidia-gpu":
        warnings.append("NVML does not report whether the GPU clocks are locked: lock them "
                        "(`nvidia-smi --lock-gpu-clocks=F,F`) for repeatable figures; the clocks at both ends "
                        "of the run are recorded")
    if kind != "jetson":  # a Jetson's CPU clocks are part of clocks_locked
        if cpu.get("cpu_clocks_fixed") is False:
            warnings.append(f"CPU frequency scaling is active (governor {', '.join(cpu.get('cpu_governor', []))}): "
                            "set the performance governor or equal min/max frequencies for repeatable figures")
        elif cpu.get("cpu_clocks_fixed") is None and kind == "cpu":
            warnings.append("CPU clock state unknown (no cpufreq, e.g. a virtual machine): the host may scale "
                            "or share the cores; compare ratios measured in one run")
    load = cpu.get("load_average")
    if load and usable_cores and load[0] > 0.5 * usable_cores:
        warnings.append(f"load average {load[0]:.2f} on {usable_cores} usable cores: other work shares the CPU")
    return warnings


# -- a measured run --------------------------------------------------------------------------------------------
class _Poller(threading.Thread):
    """Calls `read()` every `interval` seconds and keeps (time, value) pairs until stopped."""

    def __init__(self, read: Callable[[], dict | None], interval: float):
        super().__init__(daemon=True, name="omniad-devicestate")
        self.read, self.interval, self.samples = read, interval, []
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            value = self.read()
            if value:
                self.samples.append((time.monotonic(), value))
            self._stop_event.wait(self.interval)

    def stop(self):
        self._stop_event.set()
        self.join(timeout=5)


class _Tegrastats(threading.Thread):
    """A `tegrastats --interval MS` process whose lines are parsed as they come."""

    def __init__(self, argv: list[str]):
        super().__init__(daemon=True, name="omniad-tegrastats")
        self.samples: list[tuple[float, dict]] = []
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def run(self):
        for line in self.proc.stdout:
            parsed = parse_tegrastats(line)
            if parsed:
                self.samples.append((time.monotonic(), parsed))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.join(timeout=5)


def _energy_j(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    """Energy (J) of power samples (time, mW) over [start, end]: trapezoids, the ends held at the nearest sample."""
    pts = [(t, p) for t, p in samples if p is not None]
    if not pts:
        return None
    pts = [(start, pts[0][1])] + [(t, p) for t, p in pts if start < t < end] + [(end, pts[-1][1])]
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(pts, pts[1:])) / 1e3


class Recorder:
    """Device state around a measured run: `start()` before the measured frames, `stop(frames)` after them.

    stop() returns {"kind", "start", "end", "energy", "missing", "warnings"}; "energy" holds joules over the run
    and per frame with their source, or is None with the reason in "missing". Not thread-safe: one per run."""

    def __init__(self, system: System | None = None, *, nvml: bool = True, gpu_index: int = 0,
                 interval_s: float = 0.1, usable_cores: int | None = None, tegrastats: list[str] | None = None,
                 use_jtop: bool = True):
        self.system = system or System()
        self.nvml, self.gpu_index, self.interval = nvml, gpu_index, interval_s
        self.usable_cores = usable_cores
        self.tegrastats_argv = tegrastats or ["tegrastats", "--interval", str(max(10, int(interval_s * 1e3)))]
        self.use_jtop = use_jtop
        self._jtop = self._sampler = None
        self._start = None

    def start(self) -> dict:
        missing = {}
        if self.use_jtop and is_jetson(self.system):
            self._jtop, why = self._open_jtop()
            if why:
                missing["jtop"] = why
        self._start = snapshot(self.system, nvml=self.nvml, gpu_index=self.gpu_index, jtop=self._jtop)
        self._start["missing"].update(missing)
        self._t0 = time.monotonic()
        if self._start["kind"] == "jetson":
            self._sampler, why = self._jetson_sampler()
            if why:
                self._start["missing"]["power_samples"] = why
        return self._start

    def _open_jtop(self):
        try:
            from jtop import jtop
        except ImportError:
            return None, "jetson-stats is not installed (pip install 'omniad-edge[jetson]'); using tegrastats"
        client = jtop(interval=max(self.interval, 0.1))
        try:
            client.start()
        except Exception as exc:  # jtop raises its own JtopException when its service is not running
            return None, f"jtop could not connect to its service ({exc}); using tegrastats"
        return client, None

    def _jetson_sampler(self):
        if self._jtop is not None:
            poller = _Poller(lambda: _jtop_state(self._jtop), self.interval)
            poller.start()
            return poller, None
        if shutil.which(self.tegrastats_argv[0]) is None:
            return None, f"`{self.tegrastats_argv[0]}` not found on PATH: no power samples, no energy"
        try:
            reader = _Tegrastats(self.tegrastats_argv)
        except OSError as exc:
            return None, f"`{' '.join(self.tegrastats_argv)}` could not start: {exc}"
        reader.start()
        return reader, None

    def stop(self, frames: int) -> dict:
        if self._start is None:
            raise RuntimeError("Recorder.stop() before start()")
        t1 = time.monotonic()
        samples = []
        if self._sampler is not None:
            self._sampler.stop()
            samples = self._sampler.samples
        end = snapshot(self.system, nvml=self.nvml, gpu_index=self.gpu_index, jtop=self._jtop)
        if self._jtop is not None:
            self._jtop.close()
            self._jtop = None
        start, self._start = self._start, None
        missing = {**start["missing"], **end["missing"]}
        energy = self._energy(start, end, samples, self._t0, t1, missing)
        if energy is not None:
            energy["per_frame_j"] = energy["joules"] / frames if frames else None
        result = {"kind": start["kind"], "start": start, "end": end, "seconds": t1 - self._t0, "energy": energy,
                  "missing": missing, "warnings": clock_warnings(start, self.usable_cores)}
        if samples:
            result["samples"] = _summarise_samples([s for _, s in samples])
        gpu0, gpu1 = start.get("gpu", {}), end.get("gpu", {})
        if gpu0.get("graphics_clock_mhz") not in (None, gpu1.get("graphics_clock_mhz")):
            result["warnings"].append(f"GPU graphics clock moved during the run ({gpu0['graphics_clock_mhz']:.0f} "
                                      f"-> {gpu1.get('graphics_clock_mhz', float('nan')):.0f} MHz)")
        for w in result["warnings"]:
            log.warning("device state: %s", w)
        return result

    @staticmethod
    def _energy(start, end, samples, t0, t1, missing) -> dict | None:
        if start["kind"] == "jetson":
            power = [(t, s.get("power_mw")) for t, s in samples]
            joules = _energy_j(power, t0, t1)
            if joules is None:
                missing.setdefault("energy", "no board power samples (tegrastats / jtop) during the run")
                return None
            source = next((s.get("power_source") for _, s in samples if s.get("power_source")), "jtop total power")
            return {"joules": joules, "source": f"{source}, {len(power)} samples"}
        if start["kind"] == "nvidia-gpu":
            e0, e1 = start["gpu"].get("energy_mj"), end["gpu"].get("energy_mj")
            if e0 is None or e1 is None:
                missing.setdefault("energy", "the GPU has no NVML energy counter")
                return None
            return {"joules": (e1 - e0) / 1e3, "source": "NVML total energy counter (GPU board only)"}
        e0, e1 = start["cpu"].get("cpu_energy_uj"), end["cpu"].get("cpu_energy_uj")
        if e0 is None or e1 is None or e1 < e0:  # a wrapped counter is not guessed around
            missing.setdefault("energy", "no CPU energy counter (Intel RAPL) readable")
            return None
        return {"joules": (e1 - e0) / 1e6, "source": "Intel RAPL package 0 (CPU package only)"}


def _summarise_samples(samples: list[dict]) -> dict:
    """Min / mean / max of the numeric fields sampled during the run (power, EMC and GPU frequency and load)."""
    out = {}
    for key in ("power_mw", "emc_freq_mhz", "emc_load_pct", "gpu_freq_mhz", "gpu_load_pct"):
        values = [s[key] for s in samples if isinstance(s.get(key), (int, float))]
        if values:
            out[key] = {"min": min(values), "mean": sum(values) / len(values), "max": max(values), "n": len(values)}
    return out


def describe(result: dict) -> list[str]:
    """Markdown list lines for a report: the state at the start of the run, energy, what is missing, warnings."""
    start = result["start"]
    cpu, parts = start["cpu"], [f"device {result['kind']}"]
    j, gpu = start.get("jetson"), start.get("gpu")
    if j is not None:
        mode = j.get("power_mode")
        parts.append(f"power mode {mode['name']} ({mode['id']})" if mode else "power mode unknown")
        locked = j.get("clocks_locked")
        parts.append("clocks locked" if locked else "clocks NOT locked" if locked is False else "clock lock unknown")
        if "gpu_freq_mhz" in j and j["gpu_freq_mhz"].get("cur") is not None:
            parts.append(f"GPU {j['gpu_freq_mhz']['cur']:.0f} MHz")
        if "emc_freq_mhz" in j:
            parts.append(f"EMC {j['emc_freq_mhz']:.0f} MHz")
    if gpu is not None:
        parts.append(f"{gpu.get('name', 'GPU')}: graphics {gpu.get('graphics_clock_mhz', '?')} / memory "
                     f"{gpu.get('memory_clock_mhz', '?')} MHz, {gpu.get('power_w', '?')} W, "
                     f"{gpu.get('memory_used_mib', 0):.0f} MiB used, {gpu.get('performance_state', '?')}")
    if "load_average" in cpu:
        parts.append("load " + "/".join(f"{v:.2f}" for v in cpu["load_average"]))
    freq = cpu.get("cpu_freq_mhz")
    if freq:
        cur = [f for f in freq["cur"] if f is not None]
        if cur:
            parts.append(f"CPU {min(cur):.0f}-{max(cur):.0f} MHz ({freq['source']}"
                         + (f", governor {'/'.join(cpu['cpu_governor'])}" if cpu.get("cpu_governor") else "") + ")")
    temps = dict(cpu.get("temperature_c", {}), **(j or {}).get("temperature_c", {}))
    if gpu is not None and "temperature_c" in gpu:
        temps["gpu"] = gpu["temperature_c"]
    if temps:
        parts.append(f"max temperature {max(temps.values()):.1f} C")
    energy = result.get("energy")
    if energy is None:
        parts.append("energy not measured")
    elif energy.get("per_frame_j") is None:
        parts.append(f"energy {energy['joules']:.1f} J over the run ({energy['source']})")
    else:
        parts.append(f"energy {energy['per_frame_j']:.3f} J per frame ({energy['source']})")
    lines = ["- " + ", ".join(parts)]
    if result["missing"]:
        lines.append("- not read: " + "; ".join(f"{k} ({v})" for k, v in sorted(result["missing"].items())))
    lines += [f"- **warning**: {w}" for w in result["warnings"]]
    return lines
