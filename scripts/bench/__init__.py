"""Benchmarks, soak, samples, the GPU check, and the one WER and percentile they report with."""
