"""Reading the source video: its format, and its frames resampled to the dataset frame rate, as a player shows them.

A phone stores a portrait video as landscape frames plus a display rotation, and some cameras and broadcast
formats store non-square pixels; :func:`upright_bgr` turns each frame upright and stretches it to square pixels,
so every stage sees what the person who filmed it saw.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from synctalk.errors import UserError


def probe_video(path: Path) -> dict:
    """Frame rate, size as shown (after the display rotation, in square pixels), video duration (s), codec, audio
    presence, ``rotation`` (degrees counter-clockwise a player turns the stored frames) and ``pixel_aspect`` (the
    stored pixels' width / height) of a video file."""
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
            aspect = v.sample_aspect_ratio or v.codec_context.sample_aspect_ratio
            aspect = float(aspect) if aspect else 1.0
            width = round(v.codec_context.width * aspect) if abs(aspect - 1) > 1e-3 else v.codec_context.width
            height = v.codec_context.height
            first = next(c.decode(v), None)
            rotation = (0, 90, 180, -90)[quarter_turns(first)] if first is not None else 0
            if rotation % 180:
                width, height = height, width
            return {"fps": float(rate) if rate else None, "width": width, "height": height, "duration_s": duration,
                    "codec": v.codec_context.name, "has_audio": bool(c.streams.audio), "rotation": rotation,
                    "pixel_aspect": round(aspect, 6)}
    except av.error.FFmpegError as e:
        raise UserError(f"cannot read video {path}: {e}") from None


def quarter_turns(frame) -> int:
    """Quarter turns counter-clockwise (0-3) a player applies to a decoded frame (its display matrix)."""
    return round((frame.rotation or 0) / 90) % 4


def upright_bgr(frame, pixel_aspect: float = 1.0) -> np.ndarray:
    """A decoded frame as a player shows it: (H, W, 3) uint8 BGR, stretched to square pixels (the stored width times
    ``pixel_aspect``, :func:`probe_video`'s) and turned by the display rotation."""
    bgr = frame.to_ndarray(format="bgr24")
    if abs(pixel_aspect - 1) > 1e-3:
        bgr = cv2.resize(bgr, (round(bgr.shape[1] * pixel_aspect), bgr.shape[0]), interpolation=cv2.INTER_CUBIC)
    turns = quarter_turns(frame)
    return np.ascontiguousarray(np.rot90(bgr, turns)) if turns else bgr


def progressive_frames(container, stream) -> Iterator["av.VideoFrame"]:
    """The stream's decoded frames, with interlaced ones (broadcast video: two fields taken 1/50 or 1/60 s apart,
    whose moving edges are combed) deinterlaced by FFmpeg's motion-adaptive ``bwdif`` filter, one frame out per frame
    in, timestamps kept; progressive frames pass untouched."""
    import av

    graph = None

    def pulled():
        while True:
            try:
                yield graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return

    for frame in container.decode(stream):
        if graph is None and not frame.interlaced_frame:
            yield frame
            continue
        if graph is None:  # the first interlaced frame: from here on through the filter
            graph = av.filter.Graph()
            source, sink = graph.add_buffer(template=stream), graph.add("buffersink")
            deinterlace = graph.add("bwdif", "mode=send_frame:parity=auto:deint=interlaced")
            source.link_to(deinterlace)
            deinterlace.link_to(sink)
            graph.configure()
        graph.push(frame)
        yield from pulled()
    if graph is not None:
        graph.push(None)
        yield from pulled()


def resampled_frames(video: Path, fps: float) -> Iterator[tuple[int, "av.VideoFrame"]]:
    """The source frames resampled to ``fps``: (output index, decoded frame shown at index / fps seconds).

    Time 0 is the first frame's timestamp (a broadcast or cut recording's clock may start anywhere). Each output slot
    takes the source frame on screen at its time (timestamps up to 1 ms late, rounded by a container's clock, count
    as on time), so variable frame rates are handled; the same decoded frame is yielded for every slot it covers.
    Frames without a timestamp (raw streams) follow the previous one by one frame at the stream's rate; interlaced
    frames are deinterlaced (:func:`progressive_frames`). Frames are decoded one at a time (convert with
    :func:`upright_bgr` only the ones you use). A corrupt or truncated file raises :class:`UserError` saying how
    many frames were decoded.
    """
    import av

    step = Fraction(1) / Fraction(fps).limit_denominator(1001)
    slack = Fraction(1, 1000)
    written, next_t = 0, Fraction(0)
    try:
        with av.open(str(video)) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            period = 1 / Fraction(stream.average_rate or stream.guessed_rate or 25)
            last, last_end, origin = None, Fraction(0), None
            for frame in progressive_frames(c, stream):
                if frame.pts is not None and frame.time_base is not None:
                    t = Fraction(frame.pts) * frame.time_base
                    origin = t if origin is None else origin
                    t -= origin
                else:
                    t = Fraction(0) if last is None else last_t + period
                while last is not None and next_t + slack < t:  # slots shown before this frame take the previous one
                    yield written, last
                    written, next_t = written + 1, next_t + step
                last, last_t = frame, t
                shown = Fraction(frame.duration) * frame.time_base if frame.duration and frame.time_base else period
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
