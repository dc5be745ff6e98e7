"""The test run's warning policy (conftest.py): warnings from this project's modules fail, a dependency's do not."""
import warnings

import pytest


@pytest.mark.parametrize("module", ["omniad_edge", "omniad_edge.tensorrt.build", "export.pipeline", "training.train",
                                    "benchmarks.compare"])
def test_a_warning_from_our_modules_is_an_error(module):
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old call", DeprecationWarning, "x.py", 1, module=module)


@pytest.mark.parametrize("module", ["numpy.core", "onnxruntime", "omniad_edge_plugin", "exporter"])
def test_a_warning_from_a_dependency_is_not(module):
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("upstream deprecation", DeprecationWarning, "x.py", 1, module=module)
    assert [str(w.message) for w in caught] == ["upstream deprecation"]
