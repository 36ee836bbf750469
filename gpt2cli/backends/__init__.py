"""Model backends: PyTorch (transformers) and ONNX Runtime, behind one interface (see base.py)."""
