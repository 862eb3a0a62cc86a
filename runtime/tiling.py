"""Fixed-size tiling: split an image into overlapping tiles, run a model on batches of them, blend the results back.

NSR routes every tile to its kernel banks, and edge runtimes want one fixed input shape, so the tile geometry is part
of a model's deploy contract (it is stored in the model card through ``TileSpec.to_dict``). The demo apps implement
the same contract; keep this module the readable definition of it.

Geometry, in input (LR) pixels, for one axis of length n with tile T, context margin p, stride s, core C = T - 2p:
the image is padded by p on both sides (length L = n + 2p); a tile starting at padded position P sees
``padded[P : P + T]`` and writes its core, image pixels ``[P, P + C)``, to the output; the margins are discarded.
Overlapping cores are averaged with the tiles' weights. With ``scale`` s the model returns T*s tiles and every
coordinate above is multiplied by s.

Two layouts:
- ``edge_strips=True`` (the reference NSR evaluation, pt_ir ``common/images.py``): a grid of ``n2 = (L - T)//s + 1``
  tiles centred with offset ``crop//2`` (``crop = L - ((n2 - 1)s + T)``), plus four edge strips: the top row of tiles
  at columns ``j*s``, the right column at rows ``i*s``, the bottom row at columns ``crop + j*s`` and the left column
  at rows ``crop + i*s``. Strip tiles blend with ``edge_weight`` (0.3 in the reference).
- ``edge_strips=False`` (deployment): tiles at ``0, s, 2s, ...`` and one last tile flush with the end; fewer tiles.

Small images: an axis with n <= C fits one core, so it gets a single tile position: the tile starts p before the
image and everything past the image is padding (cropped from the output). Padding is ``pad_mode``; "reflect" (like
``torch.nn.functional.pad(mode="reflect")``) needs pad <= n - 1, so on an axis where more padding is needed (tiny
images, e.g. 1x1 or 3x7) that axis is padded "symmetric" (edge pixels repeated in the mirror) instead.
Tiles that land on the same position (strips meet the grid when ``crop`` is 0) are merged into one tile whose weight
is the sum: same result as the reference, fewer model calls.

``whole_below``: the reference routes an image whose shorter side is below 4 x 48 = 192 LR pixels as one sample of
its own size instead of tiling it. ``REFERENCE`` does the same (the model then sees a variable-size input); fixed-shape
runtimes use ``whole_below=0``.

numpy only: this module runs on a device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterator, Sequence

import numpy as np

__all__ = [
    "TileSpec",
    "TilePlacement",
    "REFERENCE",
    "deploy_spec",
    "plan_tiles",
    "split",
    "stitch",
    "run_tiled",
    "weight_map",
]

PAD_MODES = ("reflect", "symmetric", "edge")


@dataclass(frozen=True)
class TileSpec:
    """How an image is cut into model-sized tiles. All sizes in input (LR) pixels."""

    tile: int  # tile side the model sees, context margins included
    pad: int  # context margin on each side, discarded after inference
    stride: int  # step between neighbouring tiles (<= tile - 2 * pad, so cores overlap or touch)
    edge_strips: bool = False  # True: reference layout (centred grid + 4 edge strips); False: grid snapped to the end
    edge_weight: float = 1.0  # blend weight of edge-strip tiles (grid tiles weigh 1)
    pad_mode: str = "reflect"  # "reflect" (falls back to "symmetric" where an axis is too short), "symmetric", "edge"
    whole_below: int = 0  # an image whose shorter side is below this is one whole-image sample (0: always tile)

    def __post_init__(self) -> None:
        for name in ("tile", "pad", "stride", "whole_below"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"TileSpec.{name} must be an int, got {value!r}")
        if self.tile < 1 or self.pad < 0 or self.whole_below < 0:
            raise ValueError(f"TileSpec: need tile >= 1, pad >= 0, whole_below >= 0 ({self})")
        if self.core < 1:
            raise ValueError(f"TileSpec: tile {self.tile} leaves no core after a {self.pad} px margin on each side")
        if not 1 <= self.stride <= self.core:
            raise ValueError(f"TileSpec: stride must be in 1..{self.core} (tile - 2*pad) or cores leave gaps")
        if not self.edge_weight > 0:
            raise ValueError(f"TileSpec: edge_weight must be > 0, got {self.edge_weight}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"TileSpec: pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")

    @property
    def core(self) -> int:
        """Side of the part of a tile that is kept (tile minus the two margins)."""
        return self.tile - 2 * self.pad

    def to_dict(self) -> dict:
        """Plain JSON-able dict (for the model card)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TileSpec":
        """Inverse of ``to_dict``; unknown keys are an error (a model card is never guessed)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"TileSpec: unknown keys {sorted(unknown)}")
        return cls(**d)


REFERENCE = TileSpec(tile=48, pad=4, stride=32, edge_strips=True, edge_weight=0.3, pad_mode="reflect", whole_below=192)
"""The reference NSR evaluation: 48 px tiles, 4 px reflect margins, stride 32, edge strips at weight 0.3, and images
with a side below 192 px run whole. ``replace(REFERENCE, whole_below=0)`` is the same geometry with fixed tiles.
The reference runs only a network's body on these tiles (its skip conv runs on the whole image): that split is made
by ``nsr_edge.evaluate.model_restorer`` for specs with edge strips; this module tiles whatever function it is given."""


def deploy_spec(tile: int, pad: int = 4, overlap: int | None = None) -> TileSpec:
    """Fixed ``tile`` x ``tile`` tiles for phones (e.g. 64 or 128), snapped grid, no edge strips.

    Cores overlap by ``overlap`` px (default ``2 * pad``: 8 px like the reference) to hide seams between tiles
    routed to different kernels; stride = tile - 2 * pad - overlap.
    """
    overlap = 2 * pad if overlap is None else overlap
    stride = tile - 2 * pad - overlap
    if overlap < 0 or stride < 1:
        raise ValueError(f"deploy_spec: tile {tile} with pad {pad} and overlap {overlap} leaves stride {stride}")
    return TileSpec(tile=tile, pad=pad, stride=stride, edge_strips=False, edge_weight=1.0)


@dataclass(frozen=True)
class TilePlacement:
    """One tile: where it is read from and which output region it writes, in input-image pixels."""

    y: int  # top-left of the tile in image coordinates; negative when it reaches into the padding
    x: int
    height: int  # tile size fed to the model (spec.tile, or the image size for a whole-image sample)
    width: int
    core_y: int  # the output region this tile writes (image coordinates), inside the tile
    core_x: int
    core_h: int
    core_w: int
    weight: float  # blend weight of the core


# --------------------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Axis:
    """Tile positions along one axis, as padded-image offsets; `start`/`core` turn them into image coordinates."""

    grid: list[int]  # main grid
    along_a: list[int]  # positions of the top strip's columns / the right strip's rows
    along_b: list[int]  # positions of the bottom strip's columns / the left strip's rows
    first: int
    last: int
    pad: int
    core: int  # core length (the whole axis when it fits in one core)

    def start(self, p: int) -> int:
        return p - self.pad

    def core_start(self, p: int) -> int:
        return p  # the core begins `pad` into the tile, i.e. at the padded offset in image coordinates


def _axis(n: int, spec: TileSpec) -> _Axis:
    t, p, s = spec.tile, spec.pad, spec.stride
    length = n + 2 * p
    if length <= t:  # fits in one core: one position, padding after the image fills the tile
        return _Axis([0], [0], [0], 0, 0, p, n)
    if spec.edge_strips:
        count = (length - t) // s + 1
        crop = length - ((count - 1) * s + t)
        grid = [crop // 2 + i * s for i in range(count)]
        along_a = [i * s for i in range(count)]
        along_b = [crop + i * s for i in range(count)]
    else:
        grid = list(range(0, length - t, s)) + [length - t]
        along_a = along_b = grid
    return _Axis(grid, along_a, along_b, 0, length - t, p, spec.core)


def plan_tiles(height: int, width: int, spec: TileSpec) -> list[TilePlacement]:
    """Every tile of an image of ``height`` x ``width`` under ``spec``, grid first (row-major), then edge strips.

    Pure geometry. The cores cover every pixel; tiles at the same position are merged (weights summed).
    """
    if height < 1 or width < 1:
        raise ValueError(f"plan_tiles: empty image {height}x{width}")
    if min(height, width) < spec.whole_below:
        return [TilePlacement(0, 0, height, width, 0, 0, height, width, 1.0)]
    ay, ax = _axis(height, spec), _axis(width, spec)
    ew = float(spec.edge_weight)
    raw: list[tuple[int, int, float]] = [(py, px, 1.0) for py in ay.grid for px in ax.grid]
    if spec.edge_strips:
        raw += [(ay.first, px, ew) for px in ax.along_a]  # top strip
        raw += [(py, ax.last, ew) for py in ay.along_a]  # right strip
        raw += [(ay.last, px, ew) for px in ax.along_b]  # bottom strip
        raw += [(py, ax.first, ew) for py in ay.along_b]  # left strip
    merged: dict[tuple[int, int], float] = {}
    for py, px, w in raw:
        merged[(py, px)] = merged.get((py, px), 0.0) + w
    t = spec.tile
    return [
        TilePlacement(
            ay.start(py), ax.start(px), t, t, ay.core_start(py), ax.core_start(px), ay.core, ax.core, w
        )
        for (py, px), w in merged.items()
    ]


def weight_map(plan: Sequence[TilePlacement]) -> np.ndarray:
    """Sum of tile weights over each image pixel (float64, H x W): > 0 everywhere iff every pixel is covered."""
    h, w = _image_hw(plan)
    acc = np.zeros((h, w), np.float64)
    for t in plan:
        acc[t.core_y : t.core_y + t.core_h, t.core_x : t.core_x + t.core_w] += t.weight
    return acc


def _image_hw(plan: Sequence[TilePlacement]) -> tuple[int, int]:
    if not plan:
        raise ValueError("empty tile plan")
    return max(t.core_y + t.core_h for t in plan), max(t.core_x + t.core_w for t in plan)


# ---------------------------------------------------------------------------------------------------------- padding


def _pad_axis(arr: np.ndarray, axis: int, before: int, after: int, mode: str) -> np.ndarray:
    if before == 0 and after == 0:
        return arr
    n = arr.shape[axis]
    if mode == "reflect" and max(before, after) > n - 1:
        mode = "symmetric"  # reflect cannot pad more than n - 1 (torch refuses; numpy would fold repeatedly)
    widths = [(0, 0)] * arr.ndim
    widths[axis] = (before, after)
    return np.pad(arr, widths, mode=mode)


def _padded(image: np.ndarray, plan: Sequence[TilePlacement], spec_mode: str) -> tuple[np.ndarray, int, int]:
    """The image padded so that every tile lies inside it, and the (top, left) offset of the image in it."""
    h, w = image.shape[1:]
    top = max(0, -min(t.y for t in plan))
    left = max(0, -min(t.x for t in plan))
    bottom = max(0, max(t.y + t.height for t in plan) - h)
    right = max(0, max(t.x + t.width for t in plan) - w)
    out = _pad_axis(image, 1, top, bottom, spec_mode)
    out = _pad_axis(out, 2, left, right, spec_mode)
    return out, top, left


def _check_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"expected a non-empty CHW image, got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def _batches(
    padded: np.ndarray, top: int, left: int, plan: Sequence[TilePlacement], batch_size: int
) -> Iterator[np.ndarray]:
    for start in range(0, len(plan), batch_size):
        chunk = plan[start : start + batch_size]
        yield np.stack(
            [padded[:, t.y + top : t.y + top + t.height, t.x + left : t.x + left + t.width] for t in chunk]
        )


# --------------------------------------------------------------------------------------------------------- blending


class _Blender:
    """Accumulates weighted tile cores at output resolution; weights are kept per input pixel (s*s less memory)."""

    def __init__(self, plan: Sequence[TilePlacement], scale: int) -> None:
        self.plan = plan
        self.scale = int(scale)
        self.hw = _image_hw(plan)
        self.acc: np.ndarray | None = None
        self.next = 0

    def add(self, outputs: np.ndarray) -> None:
        s = self.scale
        outputs = np.asarray(outputs)
        chunk = self.plan[self.next : self.next + len(outputs)]
        t0 = chunk[0]
        expected = (len(chunk), t0.height * s, t0.width * s)
        if outputs.ndim != 4 or (outputs.shape[0], outputs.shape[2], outputs.shape[3]) != expected:
            raise ValueError(
                f"tile outputs have shape {outputs.shape}; expected ({expected[0]}, C, {expected[1]}, {expected[2]})"
                f" for {expected[0]} tiles of {t0.height}x{t0.width} at scale {s}"
            )
        if self.acc is None:
            h, w = self.hw
            self.acc = np.zeros((outputs.shape[1], h * s, w * s), np.float32)
        elif outputs.shape[1] != self.acc.shape[0]:
            raise ValueError(f"tile outputs changed from {self.acc.shape[0]} to {outputs.shape[1]} channels")
        for t, out in zip(chunk, outputs):
            oy, ox = (t.core_y - t.y) * s, (t.core_x - t.x) * s
            region = out[:, oy : oy + t.core_h * s, ox : ox + t.core_w * s]
            self.acc[:, t.core_y * s : (t.core_y + t.core_h) * s, t.core_x * s : (t.core_x + t.core_w) * s] += (
                np.float32(t.weight) * region
            )
        self.next += len(chunk)

    def result(self) -> np.ndarray:
        if self.acc is None or self.next != len(self.plan):
            raise ValueError(f"got outputs for {self.next} of {len(self.plan)} tiles")
        s = self.scale
        h, w = self.hw
        c = self.acc.shape[0]
        weights = weight_map(self.plan).astype(np.float32)
        out = self.acc.reshape(c, h, s, w, s) / weights[None, :, None, :, None]
        return out.reshape(c, h * s, w * s)


# ------------------------------------------------------------------------------------------------------- public ops


def split(image: np.ndarray, spec: TileSpec) -> tuple[np.ndarray, list[TilePlacement]]:
    """CHW image -> (tiles float32 N x C x T x T, plan). A whole-image sample is one tile of the image's size."""
    arr = _check_image(image)
    plan = plan_tiles(arr.shape[1], arr.shape[2], spec)
    padded, top, left = _padded(arr, plan, spec.pad_mode)
    return next(_batches(padded, top, left, plan, len(plan))), plan


def stitch(outputs: np.ndarray, plan: Sequence[TilePlacement], out_hw: tuple[int, int], scale: int) -> np.ndarray:
    """Blend model outputs (N x C' x T*s x T*s, in plan order) into one C' x H*s x W*s image.

    ``out_hw`` is the output size (H*s, W*s), checked against the plan; margins (pad*s) are discarded and
    overlapping cores averaged with the tile weights.
    """
    blender = _Blender(plan, scale)
    h, w = blender.hw
    if tuple(out_hw) != (h * scale, w * scale):
        raise ValueError(f"out_hw {tuple(out_hw)} does not match the plan: {h}x{w} input at scale {scale}")
    blender.add(outputs)
    return blender.result()


def run_tiled(
    image: np.ndarray,
    fn: Callable[[np.ndarray], np.ndarray],
    spec: TileSpec,
    scale: int = 1,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Run ``fn`` over the tiles of a CHW float32 image and blend its outputs: the whole tiled inference.

    ``fn`` maps a float32 batch B x C x T x T to B x C' x T*s x T*s. ``batch_size`` bounds B (None: all tiles at
    once; 1 for models exported with batch 1); the last batch may be smaller. ``progress(done, total)`` is called
    after every batch. Tiles are cut batch by batch, so memory stays at about one image plus one batch.
    """
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    arr = _check_image(image)
    plan = plan_tiles(arr.shape[1], arr.shape[2], spec)
    padded, top, left = _padded(arr, plan, spec.pad_mode)
    size = len(plan) if batch_size is None else int(batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    blender = _Blender(plan, int(scale))
    for tiles in _batches(padded, top, left, plan, size):
        blender.add(fn(tiles))
        if progress is not None:
            progress(blender.next, len(plan))
    return blender.result()

