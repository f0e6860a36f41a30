"""Export: ONNX (with exact folding and parity checks), bundles, TensorRT engines."""
