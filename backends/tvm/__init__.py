"""The TVM backend: QDQ ONNX -> Relax -> integer rewrite -> schedules -> library per target."""
