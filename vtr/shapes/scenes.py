"""Procedural scenes: 3–6 small shapes (circle, square, triangle) in 6 colours and 3 sizes on a cluttered,
textured 96×96 background.

A scene is a :class:`Scene`: a seed and a tuple of :class:`Obj` (shape, colour, size class, pixel box).
Everything downstream — the rendered image, per-patch labels, questions and answers — is a pure function
of that description, so a fixed seed gives a fixed scene on every machine (numpy ``default_rng``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 96
PATCH = 8
GRID = IMAGE_SIZE // PATCH  # 12×12 = 144 patches
SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan")
RGB = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 60, 230), "yellow": (235, 220, 30),
       "purple": (150, 40, 200), "cyan": (30, 210, 220)}
SIZES = {"small": 8, "medium": 12, "large": 16}  # side of the shape's box, in pixels
MIN_OBJECTS, MAX_OBJECTS = 3, 6
MAX_PER_SHAPE = 3  # "how many <shape>s" answers lie in 0..3
N_LABELS = 1 + len(SHAPES) * len(COLOURS)  # background + every (shape, colour)


@dataclass(frozen=True)
class Obj:
    """One object: ``x, y`` is the top-left corner of its ``side``×``side`` box, in pixels."""
    shape: str
    colour: str
    size: str
    x: int
    y: int

    @property
    def side(self) -> int:
        return SIZES[self.size]

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.side / 2, self.y + self.side / 2

    def label(self) -> int:
        """Patch-label class: 1 + shape·6 + colour (0 is background)."""
        return 1 + SHAPES.index(self.shape) * len(COLOURS) + COLOURS.index(self.colour)


@dataclass(frozen=True)
class Scene:
    seed: int | tuple  # seeds the background texture and colour jitter of render()
    objects: tuple[Obj, ...]


def _overlaps(a: tuple[int, int, int], b: tuple[int, int, int], gap: int = 2) -> bool:
    (ax, ay, asz), (bx, by, bsz) = a, b
    return not (ax + asz + gap <= bx or bx + bsz + gap <= ax or ay + asz + gap <= by or by + bsz + gap <= ay)


def make_scene(rng: np.random.Generator, seed=None) -> Scene:
    """Draw a scene: per-shape counts in 0..3 (total 3..6), random colours, sizes and non-overlapping places.

    ``seed`` (int or tuple of ints) seeds the texture at render time; when ``None`` it is drawn from ``rng``.
    """
    if seed is None:
        seed = int(rng.integers(2**31))
    while True:
        counts = rng.integers(0, MAX_PER_SHAPE + 1, size=len(SHAPES))
        if MIN_OBJECTS <= counts.sum() <= MAX_OBJECTS:
            break
    kinds = [SHAPES[i] for i in range(len(SHAPES)) for _ in range(int(counts[i]))]
    rng.shuffle(kinds)
    objects: list[Obj] = []
    boxes: list[tuple[int, int, int]] = []
    for shape in kinds:
        size = list(SIZES)[int(rng.integers(len(SIZES)))]
        side = SIZES[size]
        for _ in range(200):
            x, y = (int(v) for v in rng.integers(1, IMAGE_SIZE - side - 1, size=2))
            if not any(_overlaps((x, y, side), b) for b in boxes):
                break
        else:  # crowded: shrink to small and retry everywhere
            side, size = SIZES["small"], "small"
            free = [(x, y) for x in range(1, IMAGE_SIZE - side - 1) for y in range(1, IMAGE_SIZE - side - 1)
                    if not any(_overlaps((x, y, side), b) for b in boxes)]
            x, y = free[int(rng.integers(len(free)))]
        boxes.append((x, y, side))
        objects.append(Obj(shape, COLOURS[int(rng.integers(len(COLOURS)))], size, x, y))
    return Scene(seed, tuple(objects))


def scene_from_seed(seed) -> Scene:
    return make_scene(np.random.default_rng(seed), seed)


def object_mask(obj: Obj) -> np.ndarray:
    """``(IMAGE_SIZE, IMAGE_SIZE)`` bool: the pixels ``obj`` paints."""
    s = obj.side
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    if obj.shape == "circle":
        local = (xx - s / 2) ** 2 + (yy - s / 2) ** 2 <= (s / 2) ** 2
    elif obj.shape == "square":
        local = np.ones((s, s), bool)
    else:  # upright triangle: apex at the top centre, base along the bottom
        local = np.abs(xx - s / 2) <= yy / 2
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    mask[obj.y:obj.y + s, obj.x:obj.x + s] = local
    return mask


def _background(rng: np.random.Generator) -> np.ndarray:
    """Muted low-frequency colour field + pixel noise + grey specks and strokes (clutter), ``(H, W, 3)`` int16."""
    from PIL import Image

    coarse = rng.integers(70, 186, size=(6, 6, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR), dtype=np.int16)
    grey = base.mean(axis=2, keepdims=True)
    image = (0.5 * base + 0.5 * grey).astype(np.int16) + rng.integers(-22, 23, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    for _ in range(int(rng.integers(10, 20))):  # specks 1–3 px
        x, y = (int(v) for v in rng.integers(0, IMAGE_SIZE - 3, size=2))
        s = int(rng.integers(1, 4))
        image[y:y + s, x:x + s] = int(rng.integers(40, 220))
    for _ in range(int(rng.integers(2, 5))):  # thin grey strokes
        x, y = (int(v) for v in rng.integers(0, IMAGE_SIZE - 20, size=2))
        length = int(rng.integers(8, 20))
        if rng.integers(2):
            image[y, x:x + length] = int(rng.integers(40, 220))
        else:
            image[y:y + length, x] = int(rng.integers(40, 220))
    return image


def render(scene: Scene) -> np.ndarray:
    """``(96, 96, 3)`` uint8 image of ``scene``; the texture is drawn from the scene's seed, so it is fixed too."""
    rng = np.random.default_rng(_seed_words(scene.seed))
    image = _background(rng)
    for obj in scene.objects:
        jitter = rng.integers(-15, 16, size=3)
        image[object_mask(obj)] = np.asarray(RGB[obj.colour]) + jitter
    return np.clip(image, 0, 255).astype(np.uint8)


def _seed_words(seed) -> list[int]:
    words = list(seed) if isinstance(seed, tuple) else [seed]
    return [7919] + [int(w) & 0xFFFFFFFF for w in words]


def render_pil(scene: Scene):
    from PIL import Image

    return Image.fromarray(render(scene))


def patch_labels(scene: Scene) -> np.ndarray:
    """``(GRID*GRID,)`` int64 per-patch classes (row-major): an object's label where it covers ≥ 25 % of the
    patch (the largest cover wins), and every object also labels its best-covered patch, so none is unlabelled."""
    cover = np.zeros((len(scene.objects), GRID * GRID), np.float32)
    for i, obj in enumerate(scene.objects):
        mask = object_mask(obj).reshape(GRID, PATCH, GRID, PATCH).mean(axis=(1, 3))
        cover[i] = mask.reshape(-1)
    labels = np.zeros(GRID * GRID, np.int64)
    if not len(scene.objects):
        return labels
    best = cover.argmax(axis=0)
    strong = cover.max(axis=0) >= 0.25
    object_labels = np.array([o.label() for o in scene.objects])
    labels[strong] = object_labels[best[strong]]
    for i, obj in enumerate(scene.objects):
        labels[int(cover[i].argmax())] = obj.label()
    return labels


def scene_attributes(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Stage-1 [CLS] targets: ``(18,)`` float presence of each (shape, colour) pair and ``(3,)`` per-shape counts."""
    presence = np.zeros(len(SHAPES) * len(COLOURS), np.float32)
    counts = np.zeros(len(SHAPES), np.int64)
    for obj in scene.objects:
        presence[obj.label() - 1] = 1.0
        counts[SHAPES.index(obj.shape)] += 1
    return presence, counts
