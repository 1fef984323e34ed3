"""onnxmp: post-training mixed-precision quantization for ONNX models."""
