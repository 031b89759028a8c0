"""Quantisation: torch FP8 linears (GPU fast path) and Q/DQ ONNX via ModelOpt (optional extra)."""
