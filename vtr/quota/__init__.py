"""QuoTA's building blocks (the reducer itself is :mod:`vtr.reducers.quota`, registered as ``"quota"``).

- :mod:`~vtr.quota.budget`: scores → weights → per-frame counts (cap, minimum, exact total); bilinear
  resampling of a frame's token grid.
- :mod:`~vtr.quota.scorers`: the ``"self"`` scorer, :class:`ClipScorer`, and what a callable scorer gets.
- :mod:`~vtr.quota.cot`: CoT query decoupling prompt and its safe parser.
- :mod:`~vtr.quota.prompts`: reading the question from a prompt, writing prompts in the caller's template.
- :mod:`~vtr.quota.sampling`: frame counts for long videos (96 + 64 per hour).
- :func:`assignments`: what the last call did to each video.
"""
from vtr.quota.budget import allocate, frame_weights, resample_grid, row_lengths
from vtr.quota.cot import parse_objects
from vtr.quota.records import Assignment, assignments
from vtr.quota.sampling import load_video_for_quota, quota_frame_count
from vtr.quota.scorers import ClipScorer

__all__ = ["allocate", "frame_weights", "resample_grid", "row_lengths", "parse_objects", "Assignment", "assignments",
           "load_video_for_quota", "quota_frame_count", "ClipScorer"]
