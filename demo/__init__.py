"""The Gradio demo on exported ONNX packages and PyTorch stage outputs. Not built yet: see the demo issue."""
