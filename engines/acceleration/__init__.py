"""Faster inference of the same model: rewritten modules (engines.acceleration.inference), ONNX export
and checks, TensorRT engine builds, and the compiled backends that run them."""
