"""Seeded synthetic stacks: generators per kind and :func:`make_stack`."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

#: Descriptions of the available kinds, in the order of :data:`KINDS`.
KIND_DESCRIPTIONS: dict[str, str] = {
    "moving_disk": "one bright disk moving across the frame (the easy case)",
    "deforming": "a wobbling blob that moves, grows and changes shape",
    "decoy": "a moving disk and an equally bright static decoy disk (not labelled)",
    "moving_decoy": "a moving disk and an equally bright moving decoy disk (not labelled)",
    "occlusion": "a disk that passes behind an opaque bar, disappears and reappears",
    "drift": "a moving disk while the brightness and background of the stack drift",
    "noisy16": "uint16 stack: faint moving disk, heavy noise, offset and hot pixels",
    "two_objects": "two objects (ids 1 and 2) moving in different directions",
    "nuclei": "a dense field of 24 small look-alike textured nuclei (ids 1-24), some "
    "touching, drifting slightly, on a noisy uneven background",
    "nuclei_dividing": "the nuclei field where one nucleus divides at the middle frame "
    "into two daughters with new ids (25 and 26)",
}

#: Names accepted by :func:`make_stack`.
KINDS: tuple[str, ...] = tuple(KIND_DESCRIPTIONS)

#: The kinds a suite holds by default: one object each (two for ``two_objects``). The
#: nuclei fields (24 objects each) are chosen by name (``--kinds nuclei``).
DEFAULT_SUITE: tuple[str, ...] = tuple(k for k in KINDS if not k.startswith("nuclei"))

_MIN_SIZE = 16

# uint8 intensities
_BACKGROUND = 30.0
_OBJECT = 200.0
_NOISE = 8.0


class _Canvas:
    """Coordinate grids and helpers shared by the generators."""

    def __init__(self, n_frames: int, shape: tuple[int, int], rng: np.random.Generator):
        self.n_frames = n_frames
        self.height, self.width = shape
        self.rng = rng
        self.yy, self.xx = np.mgrid[0 : self.height, 0 : self.width].astype(np.float64)
        self.size = float(min(shape))

    def t(self, frame: int) -> float:
        """Frame position in ``[0, 1]``."""
        return frame / (self.n_frames - 1) if self.n_frames > 1 else 0.5

    def disk(self, cy: float, cx: float, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """Anti-aliased coverage in ``[0, 1]`` and a boolean mask of a disk."""
        dist = np.hypot(self.yy - cy, self.xx - cx)
        return np.clip(radius - dist + 0.5, 0.0, 1.0), dist <= radius

    def blob(
        self, cy: float, cx: float, radius: float, phase: float, stretch: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """A star-shaped blob whose boundary wobbles with ``phase`` and stretches."""
        dy = (self.yy - cy) / (1.0 + stretch)
        dx = (self.xx - cx) * (1.0 + stretch)
        theta = np.arctan2(dy, dx)
        boundary = radius * (
            1.0 + 0.22 * np.sin(3.0 * theta + phase) + 0.1 * np.cos(2.0 * theta - 2.0 * phase)
        )
        dist = np.hypot(dy, dx)
        return np.clip(boundary - dist + 0.5, 0.0, 1.0), dist <= boundary

    def box(self, y0: float, x0: float, y1: float, x1: float) -> np.ndarray:
        """Boolean mask of an axis-aligned rectangle."""
        return (self.yy >= y0) & (self.yy < y1) & (self.xx >= x0) & (self.xx < x1)

    def lerp(self, a: float, b: float, frame: int) -> float:
        return a + (b - a) * self.t(frame)

    def jitter(self, amount: float) -> float:
        """A seeded offset in ``[-amount, amount]`` pixels (relative to the frame size)."""
        return float(self.rng.uniform(-amount, amount)) * self.size

    def background(self) -> np.ndarray:
        """Constant background with a faint fixed gradient, as float."""
        gy = (self.yy / max(self.height - 1, 1) - 0.5) * 6.0
        return np.full((self.height, self.width), _BACKGROUND) + gy

    def noise(self, sigma: float = _NOISE) -> np.ndarray:
        return self.rng.normal(0.0, sigma, size=(self.height, self.width))


def _paint(frame: np.ndarray, coverage: np.ndarray, value: float) -> None:
    """Blend ``value`` into ``frame`` in place, weighted by ``coverage``."""
    frame *= 1.0 - coverage
    frame += coverage * value


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _moving_disk(c: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    image, labels = _alloc(c)
    radius = 0.09 * c.size
    # Starts at (0.5 H, 0.3125 W), i.e. (64, 40) in a 128x128 frame, whatever the seed.
    y0, x0 = 0.5 * c.height, 0.3125 * c.width
    x1 = 0.75 * c.width + c.jitter(0.04)
    for f in range(c.n_frames):
        frame = c.background()
        cov, mask = c.disk(y0 - 0.1 * c.height * np.sin(np.pi * c.t(f)), c.lerp(x0, x1, f), radius)
        _paint(frame, cov, _OBJECT)
        image[f] = frame + c.noise()
        labels[f][mask] = 1
    return _to_uint8(image), labels


def _deforming(c: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    image, labels = _alloc(c)
    phase0 = float(c.rng.uniform(0, 2 * np.pi))
    y0, y1 = 0.35 * c.height + c.jitter(0.04), 0.62 * c.height + c.jitter(0.04)
    x0, x1 = 0.32 * c.width + c.jitter(0.04), 0.66 * c.width + c.jitter(0.04)
    for f in range(c.n_frames):
        t = c.t(f)
        frame = c.background()
        radius = c.size * (0.09 + 0.05 * t)
        cov, mask = c.blob(
            c.lerp(y0, y1, f),
            c.lerp(x0, x1, f),
            radius,
            phase=phase0 + 2.0 * np.pi * t,
            stretch=0.35 * np.sin(np.pi * t),
        )
        _paint(frame, cov, _OBJECT)
        image[f] = frame + c.noise()
        labels[f][mask] = 1
    return _to_uint8(image), labels


def _decoy_stack(c: _Canvas, moving: bool) -> tuple[np.ndarray, np.ndarray]:
    image, labels = _alloc(c)
    radius = 0.09 * c.size
    oy = 0.3 * c.height + c.jitter(0.03)
    ox0, ox1 = 0.2 * c.width + c.jitter(0.03), 0.75 * c.width + c.jitter(0.03)
    dy = 0.72 * c.height + c.jitter(0.03)
    dx0 = 0.7 * c.width + c.jitter(0.03)
    dx1 = 0.3 * c.width + c.jitter(0.03) if moving else dx0
    for f in range(c.n_frames):
        frame = c.background()
        # decoy first, object on top: the object is always fully visible and labelled
        dcov, _ = c.disk(dy, c.lerp(dx0, dx1, f), radius)
        _paint(frame, dcov, _OBJECT)
        cov, mask = c.disk(oy, c.lerp(ox0, ox1, f), radius)
        _paint(frame, cov, _OBJECT)
        image[f] = frame + c.noise()
        labels[f][mask] = 1
    return _to_uint8(image), labels


def _decoy(c: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    return _decoy_stack(c, moving=False)


def _moving_decoy(c: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    return _decoy_stack(c, moving=True)


def _occlusion(c: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    image, labels = _alloc(c)
    radius = 0.08 * c.size
    cy = 0.5 * c.height + c.jitter(0.04)
    x0, x1 = 0.12 * c.width, 0.88 * c.width
    step = (x1 - x0) / max(c.n_frames - 1, 1)
    # Bar centred where the object is half-way; wide enough that the frame nearest the
    # middle has the object fully hidden, whatever the number of frames.
    bar_centre = 0.5 * (x0 + x1)
    half_width = radius + 0.5 * step + 2.0
    bar = c.box(-1, bar_centre - half_width, c.height + 1, bar_centre + half_width)
    bar_value = 0.45 * _OBJECT
    for f in range(c.n_frames):
        frame = c.background()
        cov, mask = c.disk(cy, c.lerp(x0, x1, f), radius)
        _paint(frame, cov, _OBJECT)
        frame[bar] = bar_value  # opaque occluder in front of the object
        image[f] = frame + c.noise()
        labels[f][mask & ~bar] = 1
    return _to_uint8(image), labels


def _drift(c: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    image, labels = _alloc(c)
    radius = 0.1 * c.size
    y0, y1 = 0.6 * c.height + c.jitter(0.04), 0.4 * c.height + c.jitter(0.04)
    x0, x1 = 0.3 * c.width + c.jitter(0.04), 0.7 * c.width + c.jitter(0.04)
    for f in range(c.n_frames):
        t = c.t(f)
        gain = 1.2 - 0.7 * t  # object fades from bright to dim (bleaching)
        offset = 40.0 * t  # background rises
        frame = c.background() + offset
        cov, mask = c.disk(c.lerp(y0, y1, f), c.lerp(x0, x1, f), radius)
        _paint(frame, cov, _BACKGROUND + offset + gain * (_OBJECT - _BACKGROUND))
        image[f] = frame + c.noise()
        labels[f][mask] = 1
    return _to_uint8(image), labels


def _noisy16(c: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    image, labels = _alloc(c)
    background, contrast, sigma = 2000.0, 1500.0, 450.0
    radius = 0.11 * c.size
    y0 = 0.5 * c.height + c.jitter(0.05)
    x0, x1 = 0.3 * c.width + c.jitter(0.04), 0.7 * c.width + c.jitter(0.04)
    n_hot = max(1, (c.height * c.width) // 2000)
    for f in range(c.n_frames):
        frame = np.full((c.height, c.width), background)
        cov, mask = c.disk(y0, c.lerp(x0, x1, f), radius)
        frame += cov * contrast
        frame += c.rng.normal(0.0, sigma, size=frame.shape)
        hot_y = c.rng.integers(0, c.height, n_hot)
        hot_x = c.rng.integers(0, c.width, n_hot)
        frame[hot_y, hot_x] = 65535.0
        image[f] = frame
        labels[f][mask] = 1
    return np.clip(np.rint(image), 0, 65535).astype(np.uint16), labels


def _two_objects(c: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    image, labels = _alloc(c)
    r1, r2 = 0.08 * c.size, 0.1 * c.size
    a = (0.25 * c.height + c.jitter(0.03), 0.2 * c.width + c.jitter(0.03))
    b = (0.3 * c.height + c.jitter(0.03), 0.75 * c.width + c.jitter(0.03))
    a_end = (0.3 * c.height, 0.75 * c.width)
    b_end = (0.75 * c.height, 0.6 * c.width)
    for f in range(c.n_frames):
        frame = c.background()
        cov1, mask1 = c.disk(c.lerp(a[0], a_end[0], f), c.lerp(a[1], a_end[1], f), r1)
        half = r2 * (1.0 + 0.25 * np.sin(np.pi * c.t(f)))
        by, bx = c.lerp(b[0], b_end[0], f), c.lerp(b[1], b_end[1], f)
        mask2 = c.box(by - half, bx - half, by + half, bx + half)
        _paint(frame, mask2.astype(np.float64), _OBJECT)
        _paint(frame, cov1, _OBJECT)  # object 1 in front where they touch
        image[f] = frame + c.noise()
        labels[f][mask2] = 2
        labels[f][mask1] = 1
    return _to_uint8(image), labels


def _alloc(c: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    shape = (c.n_frames, c.height, c.width)
    return np.zeros(shape, dtype=np.float64), np.zeros(shape, dtype=np.int32)


#: Nuclei in the ``nuclei`` kinds (whatever the frame size: their size scales with it).
_N_NUCLEI = 24


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D float image (numpy only, edges replicated)."""
    radius = int(np.ceil(2.5 * sigma))
    if sigma <= 0 or radius < 1:
        return image
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (0, 1):
        padded = np.pad(image, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], "edge")
        n = image.shape[axis]
        image = sum(
            w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel)
        )
    return image


def _place_nuclei(c: _Canvas, radii: np.ndarray) -> np.ndarray:
    """Centres ``(N, 2)``: random, half of them set against a placed neighbour (touching).

    Two nuclei overlap by at most ~12% of the sum of their radii; where the frame is too
    small for that, the candidate with the most clearance is kept.
    """
    margin = radii.max() + 1.0
    centres: list[np.ndarray] = []
    for r in radii:
        best, best_clearance = None, -np.inf
        for _ in range(200):
            if centres and c.rng.random() < 0.5:  # against a neighbour: touching
                j = int(c.rng.integers(len(centres)))
                angle = c.rng.uniform(0.0, 2.0 * np.pi)
                gap = 0.92 * (r + radii[j])
                cand = centres[j] + gap * np.array([np.sin(angle), np.cos(angle)])
            else:
                cand = np.array(
                    [
                        c.rng.uniform(margin, c.height - margin),
                        c.rng.uniform(margin, c.width - margin),
                    ]
                )
            if not (
                margin <= cand[0] <= c.height - margin and margin <= cand[1] <= c.width - margin
            ):
                continue
            if centres:
                placed = np.array(centres)
                dist = np.hypot(*(placed - cand).T)
                clearance = float(np.min(dist / (r + radii[: len(centres)])))
            else:
                clearance = np.inf
            if clearance > best_clearance:
                best, best_clearance = cand, clearance
            if clearance >= 0.88:
                break
        centres.append(best if best is not None else np.array([c.height / 2, c.width / 2]))
    return np.array(centres)


def _ellipse(
    c: _Canvas, cy: float, cx: float, a: float, b: float, angle: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An ellipse in its bounding window: ``(window, coverage, mask, u, v)``.

    ``u`` and ``v`` are the window's coordinates in the ellipse's own frame (for texture).
    """
    reach = max(a, b) + 2.0
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, c.height)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, c.width)
    window = (slice(y0, y1), slice(x0, x1))
    dy, dx = c.yy[window] - cy, c.xx[window] - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    rho = np.hypot(u / a, v / b)  # 1 on the boundary
    edge = (1.0 - rho) * min(a, b)  # ~ signed distance to the boundary, in pixels
    return window, np.clip(edge + 0.5, 0.0, 1.0), rho <= 1.0, u, v


def _nuclei_stack(c: _Canvas, dividing: bool) -> tuple[np.ndarray, np.ndarray]:
    image, labels = _alloc(c)
    scale = c.size / 256.0  # 10-25 px wide nuclei in a 256 x 256 frame
    n = _N_NUCLEI
    radii = np.maximum(c.rng.uniform(5.0, 12.5, n) * scale, 1.0)
    elong = c.rng.uniform(1.0, 1.35, n)
    angles = c.rng.uniform(0.0, np.pi, n)
    spins = c.rng.uniform(-0.06, 0.06, n)
    brightness = c.rng.uniform(150.0, 215.0, n)  # look-alikes: similar, not equal
    tex_freq = c.rng.uniform(0.5, 1.1, (n, 2))
    tex_phase = c.rng.uniform(0.0, 2.0 * np.pi, (n, 2))
    centres = _place_nuclei(c, radii)
    # slow common drift plus a small own velocity, in pixels per frame
    drift = c.rng.uniform(-0.3, 0.3, 2) * scale
    velocity = c.rng.normal(0.0, 0.25, (n, 2)) * scale
    # the dividing nucleus: the one nearest the frame centre; daughters get new ids
    mother = int(np.argmin(np.hypot(centres[:, 0] - c.height / 2, centres[:, 1] - c.width / 2)))
    split = max(1, c.n_frames // 2) if dividing else c.n_frames + 1
    # uneven illumination, fixed for the stack
    illum = 12.0 * np.sin(np.pi * c.yy / c.height + 0.7) * np.cos(np.pi * c.xx / c.width - 0.4)
    blur = 0.8 * max(scale, 0.25)

    def paint(frame, lab, obj, cy, cx, a, b, angle, value, k):
        window, cov, mask, u, v = _ellipse(c, cy, cx, a, b, angle)
        size = max(a, b)
        texture = 1.0 + 0.12 * np.sin(tex_freq[k, 0] * u / size * np.pi + tex_phase[k, 0]) * (
            np.cos(tex_freq[k, 1] * v / size * np.pi + tex_phase[k, 1])
        )
        region = frame[window]
        region *= 1.0 - cov
        region += cov * value * texture
        lab[window][mask] = obj

    for f in range(c.n_frames):
        frame = c.background() + 5.0 + illum
        lab = labels[f]
        for k in range(n):
            cy, cx = centres[k] + f * (drift + velocity[k])
            r, e, angle = radii[k], elong[k], angles[k] + f * spins[k]
            if k != mother or not dividing:
                paint(frame, lab, k + 1, cy, cx, r * e, r / e, angle, brightness[k], k)
            elif f < split:  # elongates before it divides
                stretch = 1.0 + 0.35 * (f + 1) / split
                paint(frame, lab, k + 1, cy, cx, r * e * stretch, r / e, angle, brightness[k], k)
            else:  # two daughters moving apart along the mother's long axis
                apart = r * (0.55 + 0.35 * min((f - split) / 2.0, 1.0))
                rd = max(r * 0.72, 1.0)
                for side, obj in ((-1.0, n + 1), (1.0, n + 2)):
                    dy, dx = side * apart * np.sin(angle), side * apart * np.cos(angle)
                    paint(
                        frame,
                        lab,
                        obj,
                        cy + dy,
                        cx + dx,
                        rd * 1.1,
                        rd / 1.1,
                        angle,
                        brightness[k] + 10.0,
                        k,
                    )
        image[f] = _blur(frame, blur) + c.noise(10.0)
    return _to_uint8(image), labels


def _nuclei(c: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    return _nuclei_stack(c, dividing=False)


def _nuclei_dividing(c: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    return _nuclei_stack(c, dividing=True)


_GENERATORS: dict[str, Callable[[_Canvas], tuple[np.ndarray, np.ndarray]]] = {
    "moving_disk": _moving_disk,
    "deforming": _deforming,
    "decoy": _decoy,
    "moving_decoy": _moving_decoy,
    "occlusion": _occlusion,
    "drift": _drift,
    "noisy16": _noisy16,
    "two_objects": _two_objects,
    "nuclei": _nuclei,
    "nuclei_dividing": _nuclei_dividing,
}
assert tuple(_GENERATORS) == KINDS


def _check_kind(kind: str) -> None:
    if kind not in _GENERATORS:
        raise ValueError(f"unknown synthetic kind {kind!r}; valid kinds are: {', '.join(KINDS)}")


def object_ids(kind: str) -> tuple[int, ...]:
    """Object ids present in the labels of ``kind``.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.

    Returns
    -------
    tuple of int
        ``(1, 2)`` for ``two_objects``; ``1`` to ``24`` for ``nuclei``; ``1`` to ``26``
        for ``nuclei_dividing`` (the daughters, ``25`` and ``26``, appear only in stacks of
        two frames or more); ``(1,)`` otherwise.
    """
    _check_kind(kind)
    if kind == "nuclei":
        return tuple(range(1, _N_NUCLEI + 1))
    if kind == "nuclei_dividing":
        return tuple(range(1, _N_NUCLEI + 3))
    return (1, 2) if kind == "two_objects" else (1,)


def make_stack(
    kind: str,
    n_frames: int = 8,
    shape: tuple[int, int] = (128, 128),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a synthetic stack and its ground-truth labels.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS` (see :data:`KIND_DESCRIPTIONS`).
    n_frames : int
        Number of frames ``T`` (``>= 1``).
    shape : tuple of int
        Frame size ``(H, W)``, each ``>= 16``.
    seed : int
        Seed of the noise and of small random offsets of the trajectories. The same
        ``(kind, n_frames, shape, seed)`` always gives the same arrays.

    Returns
    -------
    image : np.ndarray
        ``(T, H, W)``; ``uint16`` for ``noisy16``, ``uint8`` for every other kind.
    labels : np.ndarray
        ``(T, H, W)`` ``int32``; object id ``1`` (and ``2`` for ``two_objects``; see
        :func:`object_ids` for the nuclei kinds), ``0`` elsewhere. Decoys and occluders are
        not labelled; an occluded object is labelled only where it is visible. In the nuclei
        kinds a nucleus drawn over a touching neighbour owns the shared pixels; the dividing
        nucleus (the one nearest the centre) keeps its id up to the frame before
        ``n_frames // 2`` and from that frame on is replaced by its two daughters.

    Raises
    ------
    ValueError
        If ``kind`` is unknown (the message lists the valid kinds) or the size is invalid.
    """
    _check_kind(kind)
    n_frames = int(n_frames)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if len(shape) != 2:
        raise ValueError(f"shape must be (height, width), got {shape!r}")
    height, width = (int(s) for s in shape)
    if min(height, width) < _MIN_SIZE:
        raise ValueError(f"frames must be at least {_MIN_SIZE}x{_MIN_SIZE}, got {height}x{width}")
    # Each kind gets its own stream, so kinds are independent for a given seed.
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(kind.encode())])
    canvas = _Canvas(n_frames, (height, width), rng)
    return _GENERATORS[kind](canvas)
