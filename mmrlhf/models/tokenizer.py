"""A word-level tokenizer trained locally for the tiny/small policy presets.

The presets need a tokenizer in the Hugging Face format without any download, so we train one
with the `tokenizers` library (WordLevel model, whitespace pre-tokenizer, lowercase normaliser)
and wrap it in `PreTrainedTokenizerFast`. Words outside the corpus map to `<unk>`; real
checkpoints bring their own tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, IMAGE]  # ids 0..4 in this order

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DEFAULT_PROMPTS = [
    "What number is written?",
    "What number is written in the image?",
    "Read the digits in the image.",
    "Describe the image.",
    "What is in this picture?",
]
# Common words so short captions and prompts of other data sets are not all <unk>.
CAPTION_WORDS = (
    "a an the this that these those there here it its is are was were be been has have had do does "
    "of in on at to from with by for and or but not no yes as above below left right near next top "
    "bottom front back middle side small large big little long short old new young white black red "
    "green blue yellow brown gray grey orange pink purple dark light bright man woman person people "
    "child boy girl dog cat bird horse cow sheep animal car bus truck train bike bicycle boat plane "
    "street road building house room table chair bed window door wall floor sky tree grass water "
    "field park city food plate cup bowl pizza sandwich cake ball phone computer book sign picture "
    "image photo number numbers digit digits written write read handwritten shows showing show "
    "sitting standing walking holding looking playing eating riding wearing lying flying parked "
    "one two several many some group pair what which who where how why describe tell count word"
).split()


def default_corpus() -> list[str]:
    """The corpus for the presets: task prompts, the ten digit words and common caption words."""
    return DEFAULT_PROMPTS + [" ".join(DIGIT_WORDS), " ".join(CAPTION_WORDS), "? . , ! :"]


def train_tokenizer(corpus: list[str] | None = None, out_dir: str | Path | None = None,
                    named_tokens: dict[str, str] | None = None, control_tokens: tuple[str, ...] = ()
                    ) -> PreTrainedTokenizerFast:
    """Train a WordLevel tokenizer on `corpus` (default: `default_corpus()`), save it if `out_dir`.

    Special tokens get ids 0..4: `<pad>`, `<s>`, `</s>`, `<unk>`, `<image>` (`image_token`).
    named_tokens: other special tokens the tokenizer exposes by name (e.g. a VLM family's
    ``{"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}``; an ``image_token`` here
    replaces `<image>`), then `control_tokens` (chat-template markers such as `<|im_start|>`),
    in that order after `<unk>`.
    Encoding prepends `<s>` (when `add_special_tokens=True`); padding is on the left, as the
    policy generates from left-padded prompts. Raises ValueError on an empty corpus.
    Source: Hugging Face `tokenizers` (WordLevel + Whitespace pre-tokenizer).
    """
    corpus = default_corpus() if corpus is None else corpus
    if not any(text.strip() for text in corpus):
        raise ValueError("train_tokenizer: the corpus is empty")
    backend = Tokenizer(models.WordLevel(unk_token=UNK))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    named = {"image_token": IMAGE, **(named_tokens or {})}
    specials = [PAD, BOS, EOS, UNK, *named.values(), *control_tokens]
    backend.train_from_iterator(corpus, trainer=trainers.WordLevelTrainer(special_tokens=specials))
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        extra_special_tokens=named,
        padding_side="left",
    )
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer
