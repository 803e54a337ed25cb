"""Artefact formats: the model card and one reader/writer per file kind (checkpoint, ONNX file, TensorRT engine).

This layer sits just above the spec: it knows file layouts, not how to build or run a model.
"""
