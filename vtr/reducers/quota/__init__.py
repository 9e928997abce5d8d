"""QuoTA (arXiv 2503.08689): the reducer (:mod:`~vtr.reducers.quota.reducer`, registered as ``"quota"``) and its parts.

- :mod:`~vtr.reducers.quota.budget`: scores → weights → per-frame counts (cap, minimum, exact total); bilinear
  resampling of a frame's token grid.
- :mod:`~vtr.reducers.quota.scorers`: the ``"self"`` scorer, :class:`ClipScorer`, and what a callable scorer gets.
- :mod:`~vtr.reducers.quota.cot`: CoT query decoupling prompt and its safe parser.
- :mod:`~vtr.reducers.quota.prompts`: reading the question from a prompt, writing prompts in the caller's template.
- :mod:`~vtr.reducers.quota.sampling`: frame counts for long videos (96 + 64 per hour).
- :func:`assignments`: what the last call did to each video.
"""
from vtr.reducers.quota.budget import allocate, frame_weights, resample_grid, row_lengths
from vtr.reducers.quota.cot import parse_objects
from vtr.reducers.quota.records import Assignment, assignments
from vtr.reducers.quota.sampling import load_video_for_quota, quota_frame_count
from vtr.reducers.quota.scorers import ClipScorer
from vtr.reducers.quota.reducer import QuoTA, QuotaConfig  # registers "quota"

__all__ = ["allocate", "frame_weights", "resample_grid", "row_lengths", "parse_objects", "Assignment", "assignments",
           "load_video_for_quota", "quota_frame_count", "ClipScorer", "QuoTA", "QuotaConfig"]
