"""INT8 quantization of an exported ONNX model (toolkit half).

The names below are this package's public API; compress, the CLI and the benchmarks import
them from here, never from the modules inside.
"""

from edgeseg.quantize.static import (WEIGHT_ONLY_SESSION_CONFIG, Int8Quantizer, check_tensorrt_qdq,  # noqa: F401
                                     load_calibration, weight_only_int8)
