"""torch module -> ONNX file: dynamo exporter first, the legacy TorchScript exporter as a recorded fallback.

Big graphs (over ~1.8 GB of weights, the protobuf limit is 2 GB) keep their weights in one external data file,
`<graph>.onnx.data`, beside the graph. The dynamo exporter's graph is written straight to disk, tensor by tensor,
from the module's own weights: no serialized copy of a multi-GB graph is ever held in memory.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

from omniad_edge.errors import ExportError

__all__ = ["export_graph", "save_onnx", "quiet_tools", "EXTERNAL_DATA_THRESHOLD"]

EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)
OPSET = 18


@contextlib.contextmanager
def quiet_tools():
    """The exporters and quantizers warn and log about things that do not concern the result (torchvision ops,
    deprecations, "consider pre-processing"); silence them so an export under `-W error` or a pipeline log stays
    clean. Real failures still raise."""
    loggers = [logging.getLogger(n) for n in ("", "torch.onnx", "torch.export", "torch._export", "onnxscript",
                                              "torch.fx.experimental.symbolic_shapes", "torch._dynamo",
                                              "onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _weight_bytes(model) -> int:
    import numpy as np
    from onnx import helper

    total = 0
    for init in model.graph.initializer:
        n = int(np.prod(init.dims)) if init.dims else 1
        total += n * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    return total


def save_onnx(model, path: Path, threshold: int | None = None) -> list[Path]:
    """Write the ModelProto; returns the files written (graph, plus its data file when its weights exceed
    `threshold` bytes, EXTERNAL_DATA_THRESHOLD by default)."""
    import onnx

    threshold = EXTERNAL_DATA_THRESHOLD if threshold is None else threshold
    path = Path(path)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    if _weight_bytes(model) > threshold:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [path, data]
    onnx.save_model(model, str(path))
    return [path]


def _rename_dims(model, dim_names: dict[str, dict[int, str]]) -> None:
    """Give dynamic axes readable names (batch, seq, past, ...) instead of the exporter's s0, s1, ..."""
    mapping = {}
    for value in list(model.graph.input) + list(model.graph.output):
        names = dim_names.get(value.name)
        if not names:
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis in names and dim.dim_param:
                mapping.setdefault(dim.dim_param, names[axis])
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]
    for value in list(model.graph.input) + list(model.graph.output):  # axes the exporter split apart
        names = dim_names.get(value.name, {})
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis in names and dim.dim_param and dim.dim_param != names[axis]:
                dim.dim_param = names[axis]


def export_graph(module, args: tuple, input_names: list[str], output_names: list[str],
                 dim_names: dict[str, dict[int, str]], path, prefer_dynamo: bool = True, log=None,
                 threshold: int | None = None, fallback: str | None = "legacy") -> dict:
    """Export `module(*args)` to the ONNX file `path` (weights in `path`.data when they exceed `threshold` bytes,
    EXTERNAL_DATA_THRESHOLD by default); returns info = {"exporter": ..., "opset", "fallback_reason"}.

    dim_names maps each input/output name to {axis: name} of its dynamic axes. fallback=None: a dynamo failure is
    an ExportError (for graphs only dynamo can write), its message the reason; else the legacy exporter is tried."""
    import onnx
    import torch

    log = log or (lambda msg: None)
    path = Path(path)
    threshold = EXTERNAL_DATA_THRESHOLD if threshold is None else threshold
    info: dict = {"exporter": "dynamo" if prefer_dynamo else "legacy", "opset": OPSET}
    program = model = None
    if prefer_dynamo:
        dynamic = torch.export.Dim.DYNAMIC
        flat_specs = []
        for name in input_names:
            flat_specs.append({axis: dynamic for axis in dim_names.get(name, {})})
        # the module signatures group the KV tensors into one tuple argument after the named ones
        n_named = len(args) - (1 if isinstance(args[-1], tuple) else 0)
        specs = tuple(flat_specs[:n_named])
        if n_named < len(args):
            specs += (tuple(flat_specs[n_named:]),)
        try:
            with quiet_tools():
                program = torch.onnx.export(module, args, dynamo=True, input_names=input_names,
                                            output_names=output_names, dynamic_shapes=specs, opset_version=OPSET,
                                            verbose=False, report=False)
        except Exception as exc:  # any exporter failure: fall back, and say why in the manifest
            reason = f"{type(exc).__name__}: {exc}"[:500]
            if fallback is None:
                raise ExportError(reason) from None
            info = {"exporter": "legacy", "opset": OPSET, "fallback_reason": reason}
            log(f"dynamo export failed ({type(exc).__name__}); falling back to the legacy exporter")
    if program is None:
        import io

        flat_args = list(args[:-1]) + list(args[-1]) if isinstance(args[-1], tuple) else list(args)

        class _Flat(torch.nn.Module):  # the legacy exporter wants flat positional inputs
            def __init__(self, inner, n_named):
                super().__init__()
                self.inner, self.n_named = inner, n_named

            def forward(self, *flat):
                if self.n_named < len(flat):
                    return self.inner(*flat[:self.n_named], tuple(flat[self.n_named:]))
                return self.inner(*flat)

        n_named = len(args) - (1 if isinstance(args[-1], tuple) else 0)
        buffer = io.BytesIO()
        with quiet_tools():
            torch.onnx.export(_Flat(module, n_named), tuple(flat_args), buffer, dynamo=False,
                              input_names=input_names, output_names=output_names, opset_version=OPSET,
                              dynamic_axes={k: dict(v) for k, v in dim_names.items() if v}, do_constant_folding=True)
        model = onnx.load_model_from_string(buffer.getvalue())
        del buffer
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    if model is not None:
        save_onnx(model, path, threshold)
        del model
    else:
        weights = sum(v.const_value.nbytes for v in program.model.graph.initializers.values()
                      if v.const_value is not None)
        program.save(path, external_data=weights > threshold)
        del program
    # the structure only (external weights stay where they are) gets readable axis names
    structure = onnx.load_model(str(path), load_external_data=False)
    _rename_dims(structure, dim_names)
    onnx.save_model(structure, str(path))
    return info
