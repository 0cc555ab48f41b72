"""Writing rendered rollouts: animated GIF, MP4 (when imageio is installed) or a PNG
strip of evenly spaced frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hipi_offline.errors import InputError
from hipi_offline.store.atomic import atomic_write_bytes

VIDEO_SUFFIXES = (".gif", ".mp4", ".png")


def check_video_path(path: Path) -> None:
    """Fail before any rollout when the video format is unknown or unavailable."""
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputError(f"--video: {path} must end in {', '.join(VIDEO_SUFFIXES)}")
    if path.suffix.lower() == ".mp4":
        try:
            import imageio.v3  # noqa: F401
        except ImportError:
            raise InputError(
                "--video: .mp4 needs `pip install imageio[ffmpeg]`; use .gif or .png"
            ) from None
    if not path.parent.exists():
        raise InputError(f"--video: folder {path.parent} does not exist")


def frame_strip(frames: np.ndarray, count: int = 6) -> np.ndarray:
    """``count`` evenly spaced frames side by side: uint8 [H, count * W, 3]."""
    picks = np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int)
    return np.concatenate([frames[i] for i in picks], axis=1)


def write_video(frames: np.ndarray, path: Path, fps: float) -> Path:
    """Write frames (uint8 [F, H, W, 3]) by the path's suffix; atomic."""
    import io

    from PIL import Image

    suffix = path.suffix.lower()
    buffer = io.BytesIO()
    if suffix == ".png":
        Image.fromarray(frame_strip(frames)).save(buffer, format="PNG")
    elif suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        duration = max(20, int(round(1000 / fps)))
        images[0].save(
            buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
        )
    else:
        import imageio.v3 as iio

        buffer.write(iio.imwrite("<bytes>", frames, extension=".mp4", fps=fps))
    atomic_write_bytes(path, buffer.getvalue())
    return path


def video_paths(path: Path, methods: list[str]) -> list[Path]:
    """One video path per run: ``path`` itself for one run, else ``stem-<method>``
    (``stem-<i>-<method>`` when methods repeat)."""
    if len(methods) == 1:
        return [path]
    unique = len(set(methods)) == len(methods)
    names = [m if unique else f"{i}-{m}" for i, m in enumerate(methods)]
    return [path.with_name(f"{path.stem}-{name}{path.suffix}") for name in names]
