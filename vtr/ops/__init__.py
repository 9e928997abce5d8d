"""Pure tensor maths with no model: keep-index selection, spatial grids, token merging, analytic FLOPs."""
