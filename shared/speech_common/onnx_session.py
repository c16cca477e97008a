"""The bundled ONNX models' one way to open a session (Silero VAD, Smart Turn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def cpu_session(onnx_path: str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session of ``threads`` intra-op threads and one inter-op thread: the
    models are small and called often from one worker thread each, beside Whisper's."""
    import onnxruntime  # lazily: nothing heavy at import

    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(
        str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"]
    )
