"""int8 beyond one calibrated pass: per-layer sensitivity, mixed precision, quantization-aware fine-tuning."""
