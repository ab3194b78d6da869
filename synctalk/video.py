"""Streaming mp4 output (H.264 video, AAC audio) through PyAV's bundled FFmpeg."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from synctalk.audio.features import SAMPLE_RATE
from synctalk.io import atomic_path


class VideoWriter:
    """Write frames one at a time; the audio track is muxed in on close.

    The file appears at ``path`` only when :meth:`close` succeeds.

    Args:
        path: output .mp4.
        fps: frame rate.
        audio: optional (T,) float samples in [-1, 1] at ``sample_rate``.
    """

    def __init__(self, path: str | Path, fps: float, audio: np.ndarray | None = None, sample_rate: int = SAMPLE_RATE,
                 crf: int = 18):
        import av

        self._atomic = atomic_path(path)
        self._tmp = self._atomic.__enter__()
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        self._fps, self._crf = fps, crf
        self._video = None
        self._audio = None
        self._audio_samples, self._sample_rate = audio, sample_rate
        self.frames_written = 0

    def write(self, rgb: np.ndarray) -> None:
        """Append one frame: (H, W, 3) uint8, or float in [0, 1]."""
        import av
        from fractions import Fraction

        if rgb.dtype != np.uint8:
            rgb = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
        h, w = rgb.shape[:2]
        rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # yuv420p needs even sizes
        if self._video is None:
            self._video = self._container.add_stream("libx264", rate=Fraction(self._fps).limit_denominator(1001))
            self._video.width, self._video.height = rgb.shape[1], rgb.shape[0]
            self._video.pix_fmt = "yuv420p"
            self._video.options = {"crf": str(self._crf), "preset": "veryfast"}
            if self._audio_samples is not None and len(self._audio_samples):
                self._audio = self._container.add_stream("aac", rate=self._sample_rate)
                self._audio.layout = "mono"
        for packet in self._video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            self._container.mux(packet)
        self.frames_written += 1

    def _write_audio(self) -> None:
        import av

        stream = self._audio
        samples = np.asarray(self._audio_samples, np.float32)
        step = 1024
        for start in range(0, len(samples), step):
            chunk = samples[start:start + step]
            frame = av.AudioFrame.from_ndarray(chunk[None], format="flt", layout="mono")
            frame.sample_rate = self._sample_rate
            frame.pts = start
            for packet in stream.encode(frame):
                self._container.mux(packet)
        for packet in stream.encode(None):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoders, mux the audio and move the file into place."""
        try:
            if self._video is None:
                raise ValueError("no frames were written")
            for packet in self._video.encode(None):
                self._container.mux(packet)
            if self._audio is not None:
                self._write_audio()
            self._container.close()
        except BaseException as e:
            self._container.close()
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise
        self._atomic.__exit__(None, None, None)

    def abort(self) -> None:
        """Discard the partial file."""
        self._container.close()
        err = RuntimeError("aborted")
        self._atomic.__exit__(RuntimeError, err, None)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
