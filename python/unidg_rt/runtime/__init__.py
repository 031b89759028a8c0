"""Runtime: the UniDG pipeline over interchangeable backends (torch, ONNX Runtime, TensorRT)."""
