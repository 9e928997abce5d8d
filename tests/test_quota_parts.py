"""QuoTA's building blocks without a model: budget split, grid resampling, CoT parsing, prompts,
long-video frame counts, the CLIP scorer. Each checked against a hand computation or an independent
implementation (``F.interpolate``, plain formulas)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vtr.reducers.quota import ClipScorer, allocate, frame_weights, load_video_for_quota, parse_objects, quota_frame_count
from vtr.reducers.quota.budget import resample_grid, row_lengths
from vtr.reducers.quota.prompts import split_prompt, text_prompt
from vtr.reducers.quota.scorers import check_scores, frames_uint8
from vtr.testing import build_tokenizer


# -- weights and budget ----------------------------------------------------------------------------
def test_frame_weights_are_the_normalised_power_of_scaled_scores():
    p = torch.tensor([0.1, 0.5, 0.0, 0.9])
    raw = [(100 * x) ** 2 for x in [0.1, 0.5, 0.0, 0.9]]
    expected = torch.tensor([r / sum(raw) for r in raw], dtype=torch.float64)
    torch.testing.assert_close(frame_weights(p), expected)
    cubed = [(10 * x) ** 3 for x in [0.1, 0.5, 0.0, 0.9]]
    torch.testing.assert_close(frame_weights(p, 10, 3), torch.tensor([c / sum(cubed) for c in cubed], dtype=torch.float64))
    torch.testing.assert_close(frame_weights(torch.zeros(4)), torch.full((4,), 0.25, dtype=torch.float64))


def test_allocate_by_hand():
    # weights 0.1/0.2/0.3/0.4 of 100 tokens, caps 60, minimum 1: no bound binds, exact shares
    assert allocate(100, torch.tensor([0.1, 0.2, 0.3, 0.4]), [60] * 4) == [10, 20, 30, 40]
    # one frame wants 80 but holds 50: the other 30 go to the rest in proportion 1:2:3 (5/10/15 more)
    assert allocate(100, torch.tensor([0.8, 0.04, 0.08, 0.08]), [50, 50, 50, 50]) == [50, 10, 20, 20]
    # a minimum of 12 lifts the small frames; the big one gets what is left
    assert allocate(100, torch.tensor([0.97, 0.01, 0.01, 0.01]), [100] * 4, minimum=12) == [64, 12, 12, 12]
    # zero-weight frames keep the minimum until every weighted frame is full, then share the rest evenly
    assert allocate(10, torch.tensor([1.0, 0, 0, 0]), [4] * 4) == [4, 2, 2, 2]
    # the budget cannot give everyone the minimum: the minimum becomes budget // T
    assert allocate(8, torch.tensor([1.0, 1, 1, 1]), [10] * 4, minimum=5) == [2, 2, 2, 2]
    # a budget beyond the frames' tokens: everyone full
    assert allocate(1000, torch.tensor([0.5, 0.5]), [3, 4]) == [3, 4]


def test_allocate_properties_on_random_cases():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        t = int(torch.randint(1, 12, (1,), generator=g))
        caps = torch.randint(1, 60, (t,), generator=g).tolist()
        scores = torch.rand(t, generator=g) * (torch.rand(t, generator=g) > 0.2)
        weights = frame_weights(scores)
        minimum = int(torch.randint(1, 8, (1,), generator=g))
        budget = int(torch.randint(t, sum(caps) + 5, (1,), generator=g))
        counts = allocate(budget, weights, caps, minimum)
        assert sum(counts) == min(budget, sum(caps))  # the budget exactly (or every token)
        low = [min(minimum, c) for c in caps] if sum(min(minimum, c) for c in caps) <= budget else \
            [min(budget // t, c) for c in caps]
        assert all(lo <= n <= c for lo, n, c in zip(low, counts, caps))
        # water-filling optimality: a frame below its cap never has a smaller share per weight than a
        # frame above its minimum (up to one token of rounding)
        for i in range(t):
            for j in range(t):
                if counts[i] < caps[i] and counts[j] > low[j] and weights[i] > 0 and weights[j] > 0:
                    assert (counts[i] + 1) / weights[i] >= (counts[j] - 1) / weights[j] - 1e-9


# -- bilinear resampling ---------------------------------------------------------------------------
def reference_resize_shape(n: int) -> tuple[int, int]:
    """QuoTA's ``token_compress`` (version "v1") target shape for a share of ``n`` tokens, as its code
    states it: ``h = w = int(sqrt(n))``; if ``h·w < n``, first try one more row, else one more column."""
    h = w = int(n ** 0.5)
    while (h + 1) * (h + 1) <= n:  # exact integer square root, whatever the float rounding
        h = w = h + 1
    if h * w < n:
        if (h + 1) * w <= n:
            h += 1
        elif h * (w + 1) <= n:
            w += 1
    return h, w


@pytest.mark.parametrize("side", [16, 27])
def test_square_grid_rows_follow_the_reference_orientation(side):
    """For every share on a square grid vtr uses the reference's number of rows; where the reference's rectangle
    holds the share exactly the layout is that rectangle (k + 1 rows of k for k·(k + 1) tokens, not k of k + 1)."""
    for n in range(1, side * side + 1):
        h, w = reference_resize_shape(n)
        rows = row_lengths(n, (side, side))
        assert len(rows) == h and sum(rows) == n and min(rows) >= w, (n, h, w, rows)
        if h * w == n:
            assert rows == [w] * h
    assert row_lengths(12, (16, 16)) == [3, 3, 3, 3]  # 4 rows × 3 columns, as the reference's (4, 3)


def test_scoring_prompts_are_the_references_text():
    from vtr.reducers.quota.scorers import scoring_text

    assert scoring_text("q?", ["red car", "dog"]) == (
        "Does the image contain any object of red car, dog? A. yes, B. no\nAnswer with the option's letter directly.")
    assert scoring_text("What is it?", []) == (
        "What is it?\nDoes the image contain sufficient information to answer the given question? A. yes, B. no\n"
        "Answer with the option's letter directly.")


@pytest.mark.parametrize("grid,n", [((16, 16), 25), ((16, 16), 64), ((10, 6), 20), ((16, 16), 240)])
def test_rectangular_share_is_the_reference_bilinear_resize(grid, n):
    rows = row_lengths(n, grid)
    assert len(set(rows)) == 1 and sum(rows) == n
    h, w = len(rows), rows[0]
    features = torch.randn(grid[0] * grid[1], 8, generator=torch.Generator().manual_seed(1))
    slots, resampled = resample_grid(features, grid, n)
    image = features.T.reshape(1, 8, *grid)
    expected = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False)[0].reshape(8, -1).T
    torch.testing.assert_close(resampled, expected, rtol=0, atol=1e-5)
    # each token sits in the slot of the patch under its sampling point (cell centres of the h × w grid)
    ys = [int((i + 0.5) * grid[0] / h) for i in range(h)]
    xs = [int((j + 0.5) * grid[1] / w) for j in range(w)]
    assert slots.tolist() == [y * grid[1] + x for y in ys for x in xs]


@pytest.mark.parametrize("n", [1, 2, 3, 26, 37, 200, 255])
def test_any_share_gets_exactly_its_tokens_in_sorted_distinct_slots(n):
    features = torch.randn(256, 4)
    slots, resampled = resample_grid(features, (16, 16), n)
    assert slots.shape == (n,) and resampled.shape == (n, 4)
    assert bool((slots.diff() > 0).all()) and 0 <= int(slots.min()) and int(slots.max()) < 256
    rows = row_lengths(n, (16, 16))
    assert max(rows) - min(rows) <= 1 and len(rows) <= 16 and max(rows) <= 16


def test_full_share_is_the_frame_itself():
    features = torch.randn(60, 4)
    slots, resampled = resample_grid(features, (6, 10), 60)
    assert torch.equal(slots, torch.arange(60)) and resampled is features


# -- CoT parsing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text,objects", [
    ('Step 1: yes\nStep 2: dog, ball\nStep 3: ["dog", "ball"]', ["dog", "ball"]),
    ("step 1 - yes\nStep 3: ['red car',  'man ', 'Man', 'red   car']", ["red car", "man"]),
    ('Step 1: no\nStep 2: mood\nStep 3: ["mood"]', []),
    ('Step 3: ["cat"]\nQuestion: next?\nStep 3: ["dog"]', ["cat"]),
    ('Step 1: yes\nStep 3: ["cat", 3, None, ["x"]]', []),  # nested brackets: not a flat list literal
    ('Step 1: yes\nStep 3: ["cat", 3, None, "bird"]', ["cat", "bird"]),
    ('Step 1: yes\nStep 3: ["cat", "dog"', []),  # unterminated
    ("Step 1: yes\nStep 3: [__import__('os').system('echo pwned')]", []),  # never evaluated
    ('Step 3: [' + '"a",' * 5000 + ']', []),  # too long to be read
    ('Step 3: ' + str([f"o{i}" for i in range(40)]), [f"o{i}" for i in range(16)]),
    ("", []), ("<unk><unk> garbage ]]][[", []), (None, []),
])
def test_parse_objects_survives_malformed_output(text, objects):
    assert parse_objects(text) == objects


# -- prompts ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(image_token="<|image_pad|>", video_token="<|video_pad|>",
                           extra_specials=("<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>"))


@pytest.mark.parametrize("template,question", [
    ("USER: {v}\nwhat is in the image? ASSISTANT:", "what is in the image?"),
    ("USER: <|vision_start|>{v}<|vision_end|>describe the video in detail please ASSISTANT:",
     "describe the video in detail please"),
    ("<|im_start|>user\n<|vision_start|>{v}<|vision_end|>how many objects are there<|im_end|>\n<|im_start|>assistant\n",
     "how many objects are there"),
    ("### Human: {v} is there a red circle? ### Assistant:", "is there a red circle?"),
    ("USER: {v} ASSISTANT:", ""),
])
def test_split_prompt_finds_the_question_and_keeps_the_template(tok, template, question):
    run = "<|video_pad|>" * 5
    ids = torch.tensor(tok.encode(template.replace("{v}", run)))
    video = tok.convert_tokens_to_ids("<|video_pad|>")
    parts = split_prompt(ids, video, tok)
    assert parts.question == question
    before, after = template.split("{v}")
    assert tok.decode(parts.head, skip_special_tokens=False) == "<s>" + before
    expected = after.replace(question, "NEW", 1) if question else after.replace(" ASSISTANT", " NEW ASSISTANT")
    assert parts.tail_with("NEW") == expected
    # the text-only version drops the media delimiters around the video
    text_only = tok.decode(text_prompt(parts, "NEW", tok), skip_special_tokens=False)
    assert "<|vision_start|>" not in text_only and "<|vision_end|>" not in text_only and "NEW" in text_only


# -- long videos -----------------------------------------------------------------------------------
def test_quota_frame_count():
    assert quota_frame_count(0) == 96 and quota_frame_count(3599) == 96 + 63 and quota_frame_count(7200) == 96 + 128
    assert quota_frame_count(1800, base=8, per_hour=10, multiple_of=2) == 14  # 8 + 5 = 13 -> 14
    for bad in (dict(duration_s=-1), dict(duration_s=float("nan")), dict(duration_s=1, base=0),
                dict(duration_s=1, per_hour=-1), dict(duration_s=1, multiple_of=0)):
        with pytest.raises(ValueError, match=next(iter(k for k in bad if k != "duration_s"), "duration_s")):
            quota_frame_count(**bad)


def test_load_video_for_quota_reads_base_plus_per_hour_frames(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:  # 40 frames at 2 fps: 20 s
        stream = container.add_stream("mpeg4", rate=2)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(40):
            frame = np.full((48, 64, 3), i * 6, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames, info = load_video_for_quota(path, base=4, per_hour=720, backend="pyav")  # 4 + int(20 / 3600 * 720) = 8
    assert info.num_frames == 40 and info.duration == pytest.approx(20.0)
    assert frames.shape == (8, 48, 64, 3) and frames.dtype == np.uint8
    with pytest.raises(ValueError, match="does not exist"):
        load_video_for_quota(tmp_path / "missing.mp4")


# -- scorers ---------------------------------------------------------------------------------------
COLOURS = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0], "blue": [0.0, 0.0, 1.0]}


class FakeClip(torch.nn.Module):
    """The open_clip interface on a toy: an image embeds as its mean RGB, a text as its colour."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(()))

    def encode_image(self, images):  # (T, 3, h, w) -> (T, 3)
        return images.mean(dim=(2, 3)) * self.gain

    def encode_text(self, tokens):  # (n, 3) -> (n, 3)
        return tokens * self.gain


def fake_preprocess(image):
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


def fake_tokenizer(texts):
    return torch.tensor([COLOURS.get(t, [1.0, 1.0, 1.0]) for t in texts])


def test_clip_scorer_is_clamped_cosine_similarity_max_over_texts():
    frames = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    frames[0, ..., 0] = 200  # red
    frames[1, ..., 1] = 200  # green
    frames[2] = 90           # grey
    frames[3, ..., 2] = 255  # blue
    scorer = ClipScorer(FakeClip(), fake_preprocess, fake_tokenizer, batch_size=3)
    means = torch.from_numpy(frames.reshape(4, -1, 3).mean(1) / 255).float()
    for query, texts in (("red", ["red"]), (["red", "blue"], ["red", "blue"])):
        text = fake_tokenizer(texts)
        expected = F.cosine_similarity(means[:, None], text[None], dim=-1).max(dim=1).values.clamp(min=0)
        torch.testing.assert_close(scorer(frames, query), expected)
    with pytest.raises(TypeError, match="encode_image"):
        ClipScorer(object(), fake_preprocess, fake_tokenizer)


def test_frames_uint8_undoes_the_normalisation():
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 5, 7, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    pixels = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean)[:, None, None]) \
        / torch.tensor(std)[:, None, None]
    assert np.array_equal(frames_uint8(list(pixels), mean, std), frames)


def test_check_scores_rejects_bad_scorer_output():
    torch.testing.assert_close(check_scores([0.1, 2.0], 2), torch.tensor([0.1, 2.0], dtype=torch.float64))
    for bad, message in (([0.1], "1 scores for 2 frames"), ([0.1, -1.0], "finite scores >= 0"),
                         ([0.1, float("nan")], "finite"), ("ab", "2 numbers")):
        with pytest.raises(ValueError, match=message):
            check_scores(bad, 2)
