"""The training animation: the CVAE's completions epoch by epoch, written as a GIF (and an MP4).

Chapter "Training, animated" uses this. `training_frames` turns ``history.snapshots`` (the
completions of a few fixed test inputs, recorded after every epoch with fixed noise) into RGB
frames, each drawn by `cvae_utils.plot_training.plot_training_frame` beside the loss curves.
`write_gif` writes them with imageio (Pillow) and `write_mp4` with ffmpeg when imageio can reach
one (imageio-ffmpeg or PyAV installed); otherwise it returns None and the book shows the GIF only.
Both write atomically (`cvae_utils.files.write_atomically`), so a reader never sees half a file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .figures import figure_to_array
from .files import write_atomically
from .plot_training import plot_training_frame, update_training_frame

__all__ = ["training_frames", "write_gif", "write_mp4", "mp4_available", "save_animation"]


def training_frames(history, x, y, num_quadrants: int, dpi: int = 80) -> np.ndarray:
    """One RGB frame per recorded epoch: (epochs, height, width, 3) uint8.

    ``history``: a CVAE `History` with ``snapshots`` (epochs, n, S, 784); ``x``, ``y``: the n
    recorded inputs and their true outputs, (n, 784) with -1 where a pixel is not theirs.
    """
    if history.snapshots is None:
        raise ValueError("this history has no snapshots: it is not a CVAE training history")
    snapshots = history.snapshots
    if len(snapshots) != len(history.train_loss):
        raise ValueError(f"{len(snapshots)} snapshots for {len(history.train_loss)} epochs")
    fig, frames = None, []
    for epoch, snapshot in enumerate(snapshots, start=1):
        if fig is None:  # one figure, drawn once and updated for every later epoch
            fig = plot_training_frame(x, y, snapshot, history, epoch, num_quadrants, dpi=dpi)
        else:
            update_training_frame(fig, x, y, snapshot, history, epoch, num_quadrants)
        frames.append(figure_to_array(fig))
    return np.stack(frames)


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"frames must be a non-empty (F, H, W, 3) uint8 array, got "
                         f"{frames.dtype} {frames.shape}")
    return frames


def write_gif(frames, path: str | os.PathLike, fps: float = 2.0, hold_last: float = 2.0,
              loop: int = 0) -> Path:
    """Write ``frames`` (F, H, W, 3) uint8 as an animated GIF; returns the path.

    ``hold_last`` seconds keep the last frame on screen before the loop restarts (``loop=0``
    loops forever). Pillow merges identical consecutive frames, so frames should differ (the
    training frames do: each names its epoch).
    """
    import imageio.v3 as iio

    frames = _check_frames(frames)
    durations = [1000.0 / fps] * len(frames)          # milliseconds per frame
    durations[-1] = max(durations[-1], 1000.0 * hold_last)
    duration = durations if len(frames) > 1 else durations[0]  # Pillow: one frame, one number

    def write(tmp: Path) -> None:
        iio.imwrite(tmp, frames, extension=".gif", plugin="pillow", duration=duration,
                    loop=loop)

    return write_atomically(path, write)


def mp4_available() -> bool:
    """Whether imageio can write MP4 here: PyAV, or imageio-ffmpeg (which ships an ffmpeg)."""
    for module in ("av", "imageio_ffmpeg"):
        try:
            __import__(module)
            return True
        except ImportError:
            continue
    return False


def write_mp4(frames, path: str | os.PathLike, fps: float = 2.0) -> Path | None:
    """Write ``frames`` as an H.264 MP4 if an ffmpeg is available; else return None.

    Frames are padded with white to even sizes, which the yuv420p pixel format requires.
    """
    import imageio.v3 as iio

    if not mp4_available():
        return None
    frames = _check_frames(frames)
    _, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)

    def write(tmp: Path) -> None:
        try:
            import av  # noqa: F401
            iio.imwrite(tmp, frames, extension=".mp4", plugin="pyav", codec="libx264",
                        fps=fps, out_pixel_format="yuv420p")
        except ImportError:
            iio.imwrite(tmp, frames, extension=".mp4", plugin="FFMPEG", fps=fps,
                        codec="libx264", pixelformat="yuv420p", macro_block_size=1)

    return write_atomically(path, write)


def save_animation(frames, directory: str | os.PathLike, name: str, fps: float = 2.0,
                   mp4: bool = True) -> dict[str, Path | None]:
    """Write ``<directory>/<name>.gif`` and, when possible and asked, ``<name>.mp4``.

    Returns ``{"gif": path, "mp4": path or None}``.
    """
    directory = Path(directory)
    return {"gif": write_gif(frames, directory / f"{name}.gif", fps=fps),
            "mp4": write_mp4(frames, directory / f"{name}.mp4", fps=fps) if mp4 else None}
