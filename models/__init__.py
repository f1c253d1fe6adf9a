"""ONNX models shipped with edgeflow and the script that builds them."""

__all__: list[str] = []
