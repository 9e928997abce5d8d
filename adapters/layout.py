"""Layout helpers every family shares: which batch row owns each visual item, a view's token
indices from its kept patches, and the per-view description reducers that ask the model (QuoTA) need."""
from __future__ import annotations

from typing import Callable

import torch

from vtr.visual import VisualTokens, number_views, prompt_rows


def item_rows(input_ids: torch.Tensor, token_id: int, sizes: list[int], modality: str, source: str) -> list[int]:
    """Batch row of each image/video: items fill rows in order, item ``i`` taking ``sizes[i]`` placeholders.

    Args:
        input_ids: ``(B, N)`` the caller's prompt; ``token_id``: the items' placeholder id.
        sizes: placeholders of each item, in the order the visual inputs give them.
        modality, source: for the error, e.g. ``"image"`` and ``"pixel_values"``.
    Raises ``ValueError`` naming both counts when the prompt and the visual inputs disagree.
    """
    counts = (input_ids == token_id).sum(dim=1).tolist()
    rows, item, matched = [], 0, True
    for row, count in enumerate(counts):
        while count > 0 and item < len(sizes):
            count -= sizes[item]
            rows.append(row)
            item += 1
        matched = matched and count == 0
    if not matched or item != len(sizes):
        raise ValueError(  # opens with the model's own wording, so callers matching it keep working
            f"{modality.capitalize()} features and {modality} tokens do not match: "
            f"input_ids hold {counts} {modality} placeholders per row but {source} gives {len(sizes)} "
            f"{modality}(s) of {sizes} tokens; build the prompt with the model's processor from the same inputs"
        )
    return rows


def with_prefix(kept_patches: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """Patch indices → token indices of a view whose first ``n_prefix`` tokens are always kept."""
    prefix = torch.arange(n_prefix, device=kept_patches.device)
    return torch.cat([prefix, kept_patches.long() + n_prefix])


def describe_views(visual: VisualTokens, modality: str, kwargs: dict, frames_per_item: list[int],
                   view_pixels: Callable[[], list[torch.Tensor]],
                   view_inputs: Callable[[list[int], torch.Tensor], dict]) -> None:
    """Fill the optional :class:`~vtr.visual.VisualTokens` fields that reducers asking the model about
    single views need (QuoTA): each view's item and frame (``frames_per_item``: frames of each item,
    0 for an image), the caller's unpadded prompt rows, the views' pixels and single-view model inputs."""
    visual.views = number_views(visual.views, frames_per_item)
    visual.modality = modality
    visual.prompt_ids = prompt_rows(kwargs["input_ids"], kwargs.get("attention_mask"))
    visual.view_pixels = view_pixels
    visual.view_inputs = view_inputs
