"""Pictures of which patches a reducer kept, drawn on the image the model actually saw.

The model sees the processor's ``pixel_values`` (resized, cropped, normalised), not the user's file,
so :func:`overlay` de-normalises ``pixel_values[i]`` with the image processor's mean/std and draws
the kept patch grid on that. Kept patches stay at full colour; pruned patches are greyed and dimmed.

    images = overlays_from_stats(inputs["pixel_values"], model.vtr.stats,
                                 processor.image_processor.image_mean, processor.image_processor.image_std)
    images[0].save("kept.png")
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# ITU-R BT.601 luma weights: the grey of a pruned patch keeps the brightness structure of the photo.
_LUMA = np.array([0.299, 0.587, 0.114])


def denormalize(
    pixel_values: torch.Tensor | np.ndarray,
    mean: float | Sequence[float],
    std: float | Sequence[float],
    rescale_factor: float = 1 / 255,
) -> np.ndarray:
    """Undo ``(x * rescale_factor - mean) / std``: ``(3, H, W)`` float → ``(H, W, 3)`` uint8.

    ``mean``/``std`` are per channel (``processor.image_processor.image_mean``/``image_std``) or one
    scalar; ``rescale_factor`` is the image processor's (``1/255`` for CLIP/SigLIP processors).
    """
    values = pixel_values.detach().float().cpu().numpy() if isinstance(pixel_values, torch.Tensor) else np.asarray(pixel_values, dtype=np.float64)
    if values.ndim == 4 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 3 or values.shape[0] != 3:
        raise ValueError(
            f"pixel_values must be one image of shape (3, H, W), got {tuple(values.shape)}; pass pixel_values[i]"
        )
    mean_c = np.broadcast_to(np.asarray(mean, dtype=np.float64).reshape(-1, 1, 1), (3, 1, 1))
    std_c = np.broadcast_to(np.asarray(std, dtype=np.float64).reshape(-1, 1, 1), (3, 1, 1))
    pixels = (values * std_c + mean_c) / rescale_factor
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def as_rgb_array(image, mean=None, std=None, rescale_factor: float = 1 / 255) -> np.ndarray:
    """``image`` as ``(H, W, 3)`` uint8: a PIL image, an ``(H, W, 3)`` uint8 array, or ``(3, H, W)``
    normalised pixel values (then ``mean`` and ``std`` are required)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 3 and array.dtype == np.uint8:
        return array
    if mean is None or std is None:
        # Guessing a normalisation would silently draw the wrong colours.
        raise ValueError(
            "overlay of normalised pixel_values needs mean and std, e.g. "
            "mean=processor.image_processor.image_mean, std=processor.image_processor.image_std"
        )
    return denormalize(array, mean, std, rescale_factor)


def kept_mask(grid: tuple[int, int], kept: torch.Tensor | Sequence[int]) -> np.ndarray:
    """``(h, w)`` bool mask of the kept patches; ``kept`` holds raster indices into the ``h × w`` grid."""
    if len(grid) != 2 or any(isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 1 for g in grid):
        raise ValueError(f"grid must be two positive ints (rows, cols), got {grid!r}")
    h, w = int(grid[0]), int(grid[1])
    indices = kept.detach().cpu().numpy() if isinstance(kept, torch.Tensor) else np.asarray(kept)
    indices = indices.reshape(-1)
    if indices.size and (not np.issubdtype(indices.dtype, np.integer) or indices.min() < 0 or indices.max() >= h * w):
        raise ValueError(f"kept must hold integer patch indices in [0, {h * w}) for grid {grid}, got {indices.tolist()[:8]}...")
    mask = np.zeros(h * w, dtype=bool)
    mask[indices] = True
    return mask.reshape(h, w)


def cell_index(size: int, cells: int) -> np.ndarray:
    """For each of ``size`` pixels, the grid cell it falls in (cells as equal as integers allow)."""
    return np.arange(size) * cells // size


def overlay(
    pixel_values_or_image,
    grid: tuple[int, int],
    kept: torch.Tensor | Sequence[int],
    path: str | os.PathLike | None = None,
    *,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    rescale_factor: float = 1 / 255,
    dim: float = 0.25,
    desaturate: float = 1.0,
    outline: str | tuple[int, int, int] | None = None,
    scale: int = 1,
) -> Image.Image:
    """Draw which patches of one view were kept.

    Args:
        pixel_values_or_image: ``(3, H, W)`` normalised pixel values of the view (``pixel_values[i]``;
            needs ``mean``/``std``), or an ``(H, W, 3)`` uint8 array / PIL image already in RGB.
        grid: the view's patch grid ``(rows, cols)``, e.g. ``ViewRecord.grid`` ``(24, 24)``.
        kept: ``(k,)`` kept patch indices in raster order over ``grid`` (``ViewRecord.kept``).
        path: when given, the picture is also saved there as PNG.
        mean, std, rescale_factor: the image processor's normalisation, to recover what the model saw.
        dim: brightness factor of pruned patches (0 black … 1 unchanged).
        desaturate: how grey pruned patches become (0 keeps colour, 1 is full grey).
        outline: colour of a 1-px line around the kept region (edges between kept and pruned
            patches and the image border); ``None`` draws none, leaving kept pixels untouched.
        scale: integer nearest-neighbour upscaling, so small views (336 px) are easier to see.

    Returns the ``(H·scale, W·scale)`` RGB image. Kept patches hold the source pixels exactly
    (without ``outline``); pruned ones ``dim · mix(rgb, luma, desaturate)``.
    """
    if not 0.0 <= dim <= 1.0 or not 0.0 <= desaturate <= 1.0:
        raise ValueError(f"dim and desaturate must be in [0, 1], got dim={dim!r}, desaturate={desaturate!r}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an int >= 1, got {scale!r}")
    rgb = as_rgb_array(pixel_values_or_image, mean, std, rescale_factor)
    mask = kept_mask(grid, kept)
    height, width = rgb.shape[:2]
    if height < mask.shape[0] or width < mask.shape[1]:
        raise ValueError(f"image of {height}x{width} px is smaller than the patch grid {tuple(grid)}")
    rows, cols = cell_index(height, mask.shape[0]), cell_index(width, mask.shape[1])
    pixel_kept = mask[rows][:, cols]  # (H, W)

    source = rgb.astype(np.float64)
    grey = (source @ _LUMA)[..., None]
    pruned = dim * ((1.0 - desaturate) * source + desaturate * grey)
    out = np.where(pixel_kept[..., None], source, np.clip(np.rint(pruned), 0, 255)).astype(np.uint8)
    picture = Image.fromarray(out, "RGB")
    if scale > 1:
        picture = picture.resize((width * scale, height * scale), Image.NEAREST)
    if outline is not None:
        draw_kept_outline(picture, mask, rows, cols, scale, outline)
    if path is not None:
        picture.save(path, format="PNG")
    return picture


def draw_kept_outline(picture: Image.Image, mask: np.ndarray, rows: np.ndarray, cols: np.ndarray, scale: int, colour) -> None:
    """Draw, inside each kept cell, the sides that face a pruned cell or the image border."""
    h, w = mask.shape
    # Pixel span [first, last] of each cell at output resolution.
    row_edges = [(int(np.flatnonzero(rows == r)[0]) * scale, (int(np.flatnonzero(rows == r)[-1]) + 1) * scale - 1) for r in range(h)]
    col_edges = [(int(np.flatnonzero(cols == c)[0]) * scale, (int(np.flatnonzero(cols == c)[-1]) + 1) * scale - 1) for c in range(w)]
    padded = np.pad(mask, 1, constant_values=False)
    draw = ImageDraw.Draw(picture)
    for r, c in zip(*np.nonzero(mask)):
        (top, bottom), (left, right) = row_edges[r], col_edges[c]
        if not padded[r, c + 1]:
            draw.line([(left, top), (right, top)], fill=colour)
        if not padded[r + 2, c + 1]:
            draw.line([(left, bottom), (right, bottom)], fill=colour)
        if not padded[r + 1, c]:
            draw.line([(left, top), (left, bottom)], fill=colour)
        if not padded[r + 1, c + 2]:
            draw.line([(right, top), (right, bottom)], fill=colour)


def overlays_from_stats(pixel_values: torch.Tensor, stats, mean, std, **options) -> list[Image.Image]:
    """One :func:`overlay` per view of the last patched call.

    ``pixel_values``: the processor's ``(B_images, 3, H, W)`` tensor passed to that call; ``stats``:
    ``model.vtr.stats``. This pairs ``pixel_values[i]`` with ``stats.views[i]``, which is the layout
    of models with one view per image (LLaVA-1.5); other layouts raise ``ValueError``.
    ``options`` go to :func:`overlay` (``outline``, ``scale``, ``dim``, ...).
    """
    if stats is None or not stats.views:
        raise ValueError("no kept-patch record: run a patched generate/forward with an image first")
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or pixel_values.shape[0] != len(stats.views):
        shape = tuple(pixel_values.shape) if hasattr(pixel_values, "shape") else type(pixel_values).__name__
        raise ValueError(
            f"overlays need one (3, H, W) image per view; got pixel_values {shape} for {len(stats.views)} view(s) "
            "(multi-view layouts are not supported yet)"
        )
    return [overlay(pixel_values[i], v.grid, v.kept, mean=mean, std=std, **options) for i, v in enumerate(stats.views)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:  # older Pillow: fixed bitmap font only
        return ImageFont.load_default()


def side_by_side(
    images: Sequence[Image.Image],
    titles: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    *,
    pad: int = 8,
    font_size: int = 16,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Images in one row, each under its title, top-aligned; saved as PNG when ``path`` is given."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} images")
    font = _font(font_size)
    title_height = font_size + pad if titles else 0
    width = sum(im.width for im in images) + pad * (len(images) + 1)
    height = max(im.height for im in images) + title_height + 2 * pad
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    x = pad
    for index, image in enumerate(images):
        if titles:
            draw.text((x, pad), titles[index], fill=(0, 0, 0), font=font)
        canvas.paste(image.convert("RGB"), (x, pad + title_height))
        x += image.width + pad
    if path is not None:
        canvas.save(path, format="PNG")
    return canvas


# -- every view of a patched call ------------------------------------------------------------------

def call_overlays(model, inputs, processor, **options) -> tuple[list[Image.Image], list[str]]:
    """One picture (and a title) per view of the last patched call ``model(**inputs)``.

    Works for every family and input kind: LLaVA-1.5 images, LLaVA-NeXT views (the thumbnail, and each
    crop drawn on its full tile, the patches that unpadding removed dimmed like pruned ones), Qwen2-VL
    images and frame groups (the group's first frame), Video-LLaVA images and video frames. For a
    reducer with a pre-LLM stage it draws ``stats.views``; for an in-LLM reducer (``fastv``, ``atp``) the
    visual tokens the LLM kept at its first pruning layer (``stats.llm_columns``), mapped back to patches.
    The view layout comes from the adapter, which encodes ``inputs`` once more (no LLM pass).
    ``options`` go to :func:`overlay`. Raises ``ValueError`` where there is nothing to draw.
    """
    from vtr.signals import Signal

    handle, stats = model.vtr, model.vtr.stats
    if stats is None:
        raise ValueError("no kept-patch record: run a patched generate/forward with an image or video first")
    with torch.no_grad():
        encoded = handle.adapter.encode(dict(inputs))
    if not encoded:
        raise ValueError("the call had no image or video: nothing to draw")
    views, pixels, layouts = [], [], []
    for e in encoded:
        visual = e.visual
        views += visual.views
        pixels += list(visual.view_pixels()) if visual.view_pixels is not None else [None] * len(visual.views)
        has_layout = Signal.ANYRES_LAYOUT.value in visual.signals.available
        layouts += [t.tolist() for t in visual.signal(Signal.ANYRES_LAYOUT)] if has_layout else [None] * len(visual.views)
    if stats.views:
        kept = [record.kept for record in stats.views]
    elif stats.llm_columns:
        kept = llm_kept_patches(stats, inputs["input_ids"], encoded)
    else:
        raise ValueError(f"reducer {stats.reducer!r} recorded no kept tokens for this call")
    if len(kept) != len(views):
        raise ValueError(f"{len(kept)} kept-patch records for {len(views)} views")
    image_processor = getattr(processor, "image_processor", None) or processor
    normalisation = {"mean": image_processor.image_mean, "std": image_processor.image_std,
                     "rescale_factor": getattr(image_processor, "rescale_factor", 1 / 255)}
    pictures, titles = [], []
    for index, (view, source, layout, kept_patches) in enumerate(zip(views, pixels, layouts, kept)):
        grid = view.grid
        if layout is not None:  # LLaVA-NeXT: the view's tile of pixel_values (B_images, V, 3, H, W)
            image, crop_row, crop_col, grid_rows, grid_cols, row0, col0, rows, cols = layout
            source = inputs["pixel_values"][image, 0 if crop_row < 0 else 1 + crop_row * grid_cols + crop_col]
            if crop_row >= 0:
                side = next(views[v].grid[0] for v, l in enumerate(layouts) if l[0] == image and l[1] < 0)
                grid, kept_patches = tile_grid(view.grid, kept_patches, side, (grid_rows, grid_cols), (crop_row, crop_col),
                                               (row0, col0), (rows, cols))
            titles.append(f"image {image} " + ("thumbnail" if crop_row < 0 else f"crop {crop_row},{crop_col}"))
        else:
            if source is None:  # one view per image (LLaVA-1.5)
                source = inputs["pixel_values"][index]
            titles.append(f"view {index}" + (f" (frame {view.frame})" if view.frame >= 0 else ""))
        pictures.append(overlay(source, grid, kept_patches, **normalisation, **options))
    return pictures, titles


def tile_grid(grid, kept, side: int, crops, cell, origin, unpadded) -> tuple[tuple[int, int], torch.Tensor]:
    """A crop view's kept patches placed on its full ``side × side`` tile: ``((side, side), kept)``.

    The view holds the crop's patches that survive unpadding: a ``grid`` rectangle whose top-left is
    ``origin`` in the image's unpadded stitched grid of ``unpadded`` patches. transformers unpads
    symmetrically, so the padded stitched grid (``crops`` tiles of ``side``) lost ``(padded - unpadded) / 2``
    rows (columns) at its top (left).
    """
    top = (crops[0] * side - unpadded[0]) // 2 + origin[0] - cell[0] * side
    left = (crops[1] * side - unpadded[1]) // 2 + origin[1] - cell[1] * side
    kept = torch.as_tensor(kept).long()
    rows, cols = kept // grid[1] + top, kept % grid[1] + left
    return (side, side), rows * side + cols


def llm_kept_patches(stats, input_ids: torch.Tensor, encoded) -> list[torch.Tensor]:
    """Per view, the patch indices the LLM kept at the first in-LLM pruning layer.

    The LLM input is the caller's prompt (in-LLM reducers have no pre-LLM stage). Each segment (a run of
    one placeholder id in a row) takes the next run of that id's columns; its views take its tokens in
    view order, ``n_prefix`` prefix tokens first, unless the adapter maps each view's patches to rows of
    the segment (``view_rows``: LLaVA-NeXT, whose views interleave with ``image_newline`` tokens).
    """
    survivors = stats.llm_columns[min(stats.llm_columns)]
    used: dict[tuple[int, int], int] = {}
    kept = []
    for e in encoded:
        runs = []
        for segment in e.segments:  # the prompt columns of each segment
            columns = (input_ids[segment.sample].cpu() == segment.token_id).nonzero().squeeze(1)
            start = used.get((segment.sample, segment.token_id), 0)
            used[(segment.sample, segment.token_id)] = start + segment.n_tokens
            runs.append(columns[start:start + segment.n_tokens])
        view_rows, image_views = getattr(e, "view_rows", None), getattr(e, "image_views", None)
        if view_rows and image_views:
            owner = {v: i for i, views in enumerate(image_views) for v in views}
            patch_columns = [runs[owner[v]][view_rows[v].cpu()] for v in range(len(e.visual.views))]
        else:
            patch_columns, run, offset = [], 0, 0
            for view in e.visual.views:
                while offset >= len(runs[run]):
                    run, offset = run + 1, 0
                patch_columns.append(runs[run][offset + view.n_prefix:offset + view.n_tokens])
                offset += view.n_tokens
        for view, columns in zip(e.visual.views, patch_columns):
            kept.append(torch.isin(columns, survivors[view.sample].cpu()).nonzero().squeeze(1))
    return kept
