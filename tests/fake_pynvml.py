"""A stand-in for `pynvml` (nvidia-ml-py) with the calls omniad_edge.devicestate makes, so the NVML path runs here.

It follows nvidia-ml-py's contract as devicestate relies on it: nvmlInit before anything else (NVMLError_Uninitialized
otherwise), handles by index (NVMLError_InvalidArgument past the last GPU), NVMLError subclasses with a str() that
names the failure, power and power limits in milliwatts, memory in bytes (an object with .used/.total/.free),
clocks in MHz, the energy counter in millijoules since the driver loaded. `unsupported` names calls that raise
NVMLError_NotSupported, as a GPU without that sensor does (e.g. GeForce boards without an energy counter).
Each call of a device query advances the fake clock state by one step of `clock_steps`, so a run can see clocks move.
"""
from __future__ import annotations

from types import SimpleNamespace

NVML_CLOCK_GRAPHICS, NVML_CLOCK_SM, NVML_CLOCK_MEM = 0, 1, 2
NVML_TEMPERATURE_GPU = 0


class NVMLError(Exception):
    message = "Unknown Error"

    def __str__(self):
        return self.message


class NVMLError_Uninitialized(NVMLError):
    message = "Uninitialized"


class NVMLError_InvalidArgument(NVMLError):
    message = "Invalid Argument"


class NVMLError_NotSupported(NVMLError):
    message = "Not Supported"


class NVMLError_LibraryNotFound(NVMLError):
    message = "NVML Shared Library Not Found"


class FakeGPU:
    def __init__(self, name="NVIDIA GeForce RTX 4090", graphics=(2520.0,), memory_clock=10501.0, power_mw=65000,
                 limit_mw=450000, used=1 << 30, total=24 << 30, temp=41, pstate=2, energy_mj=(1_000_000, 1_450_000)):
        self.name, self.graphics, self.memory_clock = name, list(graphics), memory_clock
        self.power_mw, self.limit_mw, self.used, self.total = power_mw, limit_mw, used, total
        self.temp, self.pstate, self.energy = temp, pstate, list(energy_mj)
        self.reads = {"graphics": 0, "energy": 0}


state = SimpleNamespace(initialised=False, gpus=[FakeGPU()], unsupported=set(), library_missing=False,
                        init_calls=0, shutdown_calls=0)


def reset(gpus=None, unsupported=(), library_missing=False):
    state.initialised = False
    state.gpus = list(gpus) if gpus is not None else [FakeGPU()]
    state.unsupported = set(unsupported)
    state.library_missing = library_missing
    state.init_calls = state.shutdown_calls = 0


def nvmlInit():
    if state.library_missing:
        raise NVMLError_LibraryNotFound()
    state.initialised = True
    state.init_calls += 1


def nvmlShutdown():
    _check()
    state.initialised = False
    state.shutdown_calls += 1


def _check(name=None):
    if not state.initialised:
        raise NVMLError_Uninitialized()
    if name in state.unsupported:
        raise NVMLError_NotSupported()


def nvmlDeviceGetHandleByIndex(index):
    _check()
    if not 0 <= index < len(state.gpus):
        raise NVMLError_InvalidArgument()
    return state.gpus[index]


def _step(gpu, key, values):
    value = values[min(gpu.reads[key], len(values) - 1)]
    gpu.reads[key] += 1
    return value


def nvmlDeviceGetName(gpu):
    _check("nvmlDeviceGetName")
    return gpu.name


def nvmlDeviceGetClockInfo(gpu, clock):
    _check("nvmlDeviceGetClockInfo")
    if clock == NVML_CLOCK_MEM:
        return int(gpu.memory_clock)
    value = gpu.graphics[min(gpu.reads["graphics"], len(gpu.graphics) - 1)]
    if clock == NVML_CLOCK_SM:  # read after graphics: one snapshot = one step
        gpu.reads["graphics"] += 1
    return int(value)


def nvmlDeviceGetMaxClockInfo(gpu, clock):
    _check("nvmlDeviceGetMaxClockInfo")
    return {NVML_CLOCK_GRAPHICS: 3105, NVML_CLOCK_SM: 3105, NVML_CLOCK_MEM: 10501}[clock]


def nvmlDeviceGetPowerUsage(gpu):
    _check("nvmlDeviceGetPowerUsage")
    return gpu.power_mw


def nvmlDeviceGetEnforcedPowerLimit(gpu):
    _check("nvmlDeviceGetEnforcedPowerLimit")
    return gpu.limit_mw


def nvmlDeviceGetMemoryInfo(gpu):
    _check("nvmlDeviceGetMemoryInfo")
    return SimpleNamespace(used=gpu.used, total=gpu.total, free=gpu.total - gpu.used)


def nvmlDeviceGetTemperature(gpu, sensor):
    _check("nvmlDeviceGetTemperature")
    if sensor != NVML_TEMPERATURE_GPU:
        raise NVMLError_InvalidArgument()
    return gpu.temp


def nvmlDeviceGetPerformanceState(gpu):
    _check("nvmlDeviceGetPerformanceState")
    return gpu.pstate


def nvmlDeviceGetTotalEnergyConsumption(gpu):
    _check("nvmlDeviceGetTotalEnergyConsumption")
    return _step(gpu, "energy", gpu.energy)
