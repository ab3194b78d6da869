"""Preprocessing speed and memory, on the real clips and on recordings that are not head-centred squares.

    python benchmarks/preprocess.py                              # the real clips + a desk and a phone recording
    python benchmarks/preprocess.py --clips --recordings phone   # only the phone recording
    python benchmarks/preprocess.py --long-minutes 5 --long-format 720p   # also a 5-minute 1280x720 30 fps one
    python benchmarks/preprocess.py --only-long --long-minutes 5 --long-format 1080p

The desk recordings are made from a 512x512 clip (German_20s): the speaker scaled to 384 px (the face about
190 px) in a plain 1280x720 (or 1920x1080) room at 30 fps, as a webcam or a camera on a desk films it.
The long one loops the clip forwards and backwards. The phone recording is the portrait clip stored as a phone
stores it: landscape frames with a display rotation of -90 degrees (its audio copied as it is); its crop and focal
should be those of the upright clip. Every preprocessing stage runs with its defaults
(the head crop included). Writes ``benchmarks/results/preprocess.json``: per clip the crop box, the output
size and frame count, seconds per stage and in all; for the long video also the peak resident memory of
the process (it runs first, so the peak is its own). Speeds are comparable only within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

from synctalk.audio.features import load_audio
from synctalk.stages import IngestOptions, run_ingest
from synctalk.video import VideoWriter

REAL = Path(os.environ.get("SYNCTALK_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))
FORMATS = {"720p": (1280, 720), "1080p": (1920, 1080)}


def desk_recording(clip: Path, out: Path, size: tuple[int, int] = (1280, 720), fps: int = 30, speaker_px: int = 384,
                   minutes: float | None = None) -> Path:
    """The clip's speaker, ``speaker_px`` square, at the bottom right of a plain room of ``size`` (w, h), resampled
    to ``fps``; ``minutes``: the clip looped forwards and backwards to that length (audio likewise)."""
    with av.open(str(clip)) as c:
        frames = [cv2.resize(f.to_ndarray(format="rgb24"), (speaker_px, speaker_px), interpolation=cv2.INTER_AREA)
                  for f in c.decode(video=0)]
    audio = load_audio(clip)
    seconds = minutes * 60 if minutes else len(frames) / 25
    order = np.concatenate([np.arange(len(frames)), np.arange(len(frames))[::-1]])
    reps = int(np.ceil(seconds / (len(audio) / 16000)))
    sound = np.concatenate([audio if r % 2 == 0 else audio[::-1] for r in range(reps)])[: int(seconds * 16000)]
    w, h = size
    room = np.empty((h, w, 3), np.uint8)
    room[:] = np.linspace(170, 120, w)[None, :, None].astype(np.uint8)
    room[int(0.78 * h):] = (110, 80, 60)  # a desk
    cv2.rectangle(room, (w // 20, h // 6), (w // 3, int(0.58 * h)), (200, 190, 160), -1)  # a picture on the wall
    x0, y0 = int(0.6 * w), h - speaker_px
    with VideoWriter(out, fps, sound) as writer:
        for k in range(int(seconds * fps)):
            image = room.copy()
            image[y0:, x0:x0 + speaker_px] = frames[order[int(k * 25 / fps) % len(order)]]
            writer.write(image)
    return out


def phone_recording(clip: Path, out: Path, rotation: int = -90) -> Path:
    """``clip`` stored sideways with a display rotation of ``rotation`` degrees, so a player (and ``synctalk``)
    shows it as ``clip``; H.264 at CRF 18, the audio packets copied."""
    with av.open(str(clip)) as src, av.open(str(out), "w") as dst:
        video_in, audio_in = src.streams.video[0], src.streams.audio[0]
        video = dst.add_stream("libx264", rate=video_in.average_rate)
        width, height = video_in.codec_context.width, video_in.codec_context.height
        video.width, video.height = (height, width) if rotation % 180 else (width, height)
        video.pix_fmt, video.options = "yuv420p", {"crf": "18", "preset": "veryfast"}
        video.set_display_rotation(rotation)
        audio = dst.add_stream_from_template(audio_in)
        for packet in src.demux(video_in, audio_in):
            if packet.dts is None:
                continue
            if packet.stream.type == "audio":
                packet.stream = audio
                dst.mux(packet)
                continue
            for frame in packet.decode():
                stored = np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), -rotation // 90))
                dst.mux(video.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        dst.mux(video.encode(None))
    return out


def measure(video: Path, root: Path, progress: bool = False) -> dict:
    start = time.perf_counter()
    report = run_ingest(video, root, IngestOptions(progress=progress))
    crop = report["crop"]
    return {"total_s": round(time.perf_counter() - start, 1), "source": crop["source"], "crop_box": crop["box"],
            "crop_reason": crop["reason"], "face_px_source": crop.get("face_px"),
            "face_px_output": crop.get("face_px_output"), "output_size": crop["output_size"],
            "frames": report["frames"]["frames"], "stages_s": {s: r.get("elapsed_s") for s, r in report.items()},
            "focal": report["poses"]["focal"], "poses_written": report["poses"]["poses_written"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, nargs="*", default=sorted(REAL.glob("*.mp4")))
    parser.add_argument("--source", type=Path, default=REAL / "German_20s.mp4", help="clip the desk recordings use")
    parser.add_argument("--portrait", type=Path, default=REAL / "portrait_1080x1920.mp4",
                        help="clip the phone recording is made from")
    parser.add_argument("--recordings", nargs="*", choices=("desk", "phone"), default=["desk", "phone"])
    parser.add_argument("--long-minutes", type=float, default=0.0)
    parser.add_argument("--long-format", choices=sorted(FORMATS), default="720p")
    parser.add_argument("--only-long", action="store_true", help="only the long video")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "preprocess.json")
    args = parser.parse_args()
    results = {"benchmark": "preprocess", "cpus": os.cpu_count(), "clips": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.long_minutes > 0:  # first: the process's peak memory is then this video's
            video = desk_recording(args.source, tmp / "long.mp4", FORMATS[args.long_format], minutes=args.long_minutes)
            result = measure(video, tmp / "long", progress=True)
            result.update({"minutes": args.long_minutes, "format": args.long_format,
                           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})
            results["long_video"] = result
            print("long video", result, flush=True)
        if not args.only_long:
            made = {"desk": lambda: desk_recording(args.source, tmp / "desk_720p30.mp4"),
                    "phone": lambda: phone_recording(args.portrait, tmp / "phone_sideways.mp4")}
            for clip in [*args.clips, *(made[name]() for name in args.recordings)]:
                results["clips"][clip.name] = measure(clip, tmp / clip.stem)
                print(clip.name, results["clips"][clip.name], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
