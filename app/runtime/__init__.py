"""Execution-provider policy and the model store: how ONNX files are found and run."""
