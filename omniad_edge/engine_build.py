"""Deprecated: moved to the omniad_edge.tensorrt package (limits, memory, precision, record, build, cli).

Kept so that `from omniad_edge.engine_build import ...` keeps working for one release; it warns on import.
"""
from __future__ import annotations

import warnings

from .tensorrt.build import build_engines, plan
from .tensorrt.cli import add_parser, main, options_from_args
from .tensorrt.cuda import DeviceInfo
from .tensorrt.cuda import import_tensorrt as _import_tensorrt  # noqa: F401
from .tensorrt.limits import (DEFAULT_VISION_FP32_BLOCKS, FP32, INT64, MAX_BATCH, VISION_INPUTS,  # noqa: F401
                              VISION_OUTPUT, BuildOptions, Limits, decoder_input_names, decoder_output_names,
                              decoder_profiles, image_token_cap, io_buffer_plan, kv_cache_bytes, kv_scratch_bytes,
                              merge_unit, profiles_to_json, resolve_limits, vision_profile, vision_tail_blocks)
from .tensorrt.memory import RUNTIME_OVERHEAD, MemoryEstimate, check_memory, estimate_memory, graph_files  # noqa: F401
from .tensorrt.precision import (MIN_CC_FP8, MIN_CC_FP16, MIN_CC_INT8, check_bundle_precision,  # noqa: F401
                                 check_precision, check_quantization, graph_precision, min_compute_capability,
                                 strongly_typed, vision_fp32_layers)
from .tensorrt.record import (ENGINE_DIR, ENGINE_FILES, RECORD, RECORD_FORMAT, RECORD_VERSION,  # noqa: F401
                              check_record, make_record, manifest_sha256, read_record, record_limits)

warnings.warn("omniad_edge.engine_build is deprecated; import from omniad_edge.tensorrt instead",
              DeprecationWarning, stacklevel=2)

__all__ = ["BuildOptions", "Limits", "DeviceInfo", "MemoryEstimate", "resolve_limits", "vision_profile",
           "decoder_profiles", "estimate_memory", "check_memory", "check_precision", "check_bundle_precision",
           "check_quantization", "check_record", "read_record", "make_record", "record_limits", "build_engines",
           "plan", "add_parser", "main", "options_from_args"]
