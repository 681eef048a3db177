"""The data layer: Arrow schemas, safe image decoding, the digits data set, users' formats.

No ray, deepspeed or torch here: every stage (and the CLI's `data` step) can use it cheaply.
"""

from mmrlhf.data.digits import (
    DIGIT_WORDS,
    PROMPT,
    SPLITS,
    DigitsSpec,
    build_digits,
    digit_pools,
    digits_to_words,
    exact_match,
    gold_reward,
    gold_score,
    words_to_digits,
    write_digits,
)
from mmrlhf.data.formats import ReadReport, read_coco_captions, read_llava_json, read_manifest
from mmrlhf.data.media import ImageDecodeError, decode_image, encode_png, read_image_source
from mmrlhf.data.schema import (
    PREFERENCE_SCHEMA,
    RECORD_SCHEMA,
    read_table,
    to_table,
    write_table,
)

__all__ = [
    "DIGIT_WORDS",
    "PREFERENCE_SCHEMA",
    "PROMPT",
    "RECORD_SCHEMA",
    "SPLITS",
    "DigitsSpec",
    "ImageDecodeError",
    "ReadReport",
    "build_digits",
    "decode_image",
    "digit_pools",
    "digits_to_words",
    "encode_png",
    "exact_match",
    "gold_reward",
    "gold_score",
    "read_coco_captions",
    "read_image_source",
    "read_llava_json",
    "read_manifest",
    "read_table",
    "to_table",
    "words_to_digits",
    "write_digits",
    "write_table",
]
