"""Reading the source video: its format, and its frames resampled to the dataset frame rate."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterator

from synctalk.errors import UserError


def probe_video(path: Path) -> dict:
    """Frame rate, size, video duration (s), codec and audio presence of a video file."""
    import av

    if not path.is_file():
        raise UserError(f"video not found: {path}")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise UserError(f"{path} has no video stream")
            v = c.streams.video[0]
            rate = v.average_rate or v.guessed_rate
            if v.duration and v.time_base:  # the video stream's own length (the audio may be longer)
                duration = float(v.duration * v.time_base)
            elif v.frames and rate:
                duration = v.frames / float(rate)
            else:
                duration = float(c.duration / 1e6) if c.duration else None
            return {"fps": float(rate) if rate else None, "width": v.codec_context.width,
                    "height": v.codec_context.height, "duration_s": duration, "codec": v.codec_context.name,
                    "has_audio": bool(c.streams.audio)}
    except av.error.FFmpegError as e:
        raise UserError(f"cannot read video {path}: {e}") from None


def resampled_frames(video: Path, fps: float) -> Iterator[tuple[int, "av.VideoFrame"]]:
    """The source frames resampled to ``fps``: (output index, decoded frame shown at index / fps seconds).

    Each output slot takes the source frame on screen at its time, so variable frame rates are handled;
    the same decoded frame is yielded for every slot it covers. Frames are decoded one at a time (convert
    with ``frame.to_ndarray(format="bgr24")`` only the ones you use). A corrupt or truncated file raises
    :class:`UserError` saying how many frames were decoded.
    """
    import av

    step = Fraction(1) / Fraction(fps).limit_denominator(1001)
    written, next_t = 0, Fraction(0)
    try:
        with av.open(str(video)) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            last, last_end = None, Fraction(0)
            for frame in c.decode(stream):
                if frame.pts is None or frame.time_base is None:
                    continue
                t = Fraction(frame.pts) * frame.time_base
                while last is not None and next_t < t:  # slots shown before this frame take the previous one
                    yield written, last
                    written, next_t = written + 1, next_t + step
                last = frame
                shown = Fraction(frame.duration) * frame.time_base if frame.duration else 1 / Fraction(rate)
                last_end = t + shown
            while last is not None and next_t < last_end:
                yield written, last
                written, next_t = written + 1, next_t + step
    except av.error.FFmpegError as e:
        raise UserError(f"{video} is corrupt or truncated ({e}); {written} frames were decoded") from None
    if written == 0:
        raise UserError(f"no frames could be decoded from {video}")


def expected_frames(info: dict, fps: float) -> int | None:
    """Frames the video gives at ``fps`` by its container duration (None when unknown)."""
    return int(info["duration_s"] * fps) if info.get("duration_s") else None
