"""The `litert` row: .tflite files converted with litert-torch (export.py) and the flatbuffer surgery the
converters do not offer (flatbuffer.py)."""
