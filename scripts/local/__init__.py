"""The real Truss server run locally (serve), the launcher tests and benchmarks use (spawn), the
demo."""
