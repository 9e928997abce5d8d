"""A byte-level BPE tokenizer trained offline in ~50 ms (no hub access)."""
from __future__ import annotations

import functools

_CORPUS = [
    "USER: what is in the image? ASSISTANT: a cat on a mat.",
    "describe the picture in detail please, what colour is the shape on the left",
    "the quick brown fox jumps over the lazy dog. how many objects are there",
    "hello world this is a tiny tokenizer for tests. is there a red circle above the square",
    "describe the video in detail please, what happens after the person walks in",
] * 20


@functools.lru_cache(maxsize=None)
def _tokenizer_json(specials: tuple[str, ...]) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, show_progress=False, special_tokens=["<unk>", "<pad>", "<s>", "</s>", *specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok.to_str()


def build_tokenizer(image_token: str = "<image>", video_token: str = "<video>", extra_specials: tuple[str, ...] = (),
                    named: dict[str, str] | None = None):
    """Tokenizer with ids <unk>0 <pad>1 <s>2 </s>3, then ``image_token``, ``video_token``, ``extra_specials``.

    ``tokenizer.image_token(_id)`` and ``video_token(_id)`` are set, as the processors expect; ``named`` adds
    more such attributes (e.g. Gemma 3's ``{"boi_token": "<start_of_image>"}``), its tokens after ``extra_specials``.
    Left padding by default, as batched generation needs.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    named = dict(named or {})
    tok = Tokenizer.from_str(_tokenizer_json((image_token, video_token, *extra_specials, *named.values())))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": image_token, "video_token": video_token, **named}, padding_side="left",
    )
