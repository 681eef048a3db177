"""Contender: Hugging Face TRL's ``GRPOTrainer`` on the run's SFT policy (one process, CPU).

Run by ``benchmarks/vs_trl.py``, one process per measurement; prints one JSON line (see
:func:`contender.emit`). The same work as the project's loop in ``vs_trl.py``: the prompts of
:class:`mmrlhf.rollout.prompts.PromptSource` in the same order (TRL's shuffling off), the same
number of samples per prompt, new tokens, temperature and learning rate, one optimiser step per
batch (one generation batch per step, ``num_iterations=1``), no reference model (``beta=0``), the
vision tower frozen, and the same rule-based reward: the digits gold score
(``mmrlhf.data.digits.gold_reward``). TRL needs eager attention for the presets' ResNet tower
and a chat template; the template reproduces the project's prompt (``PROMPT_FORMAT``).

Phases: ``time/rollout`` is TRL's ``_generate_and_score_completions`` (generation, reward,
advantages), within it ``time/generate`` its ``_generate`` and ``time/score`` its
``_calculate_rewards``; ``time/update`` is the rest of the optimiser step.

    python benchmarks/trl_grpo.py --run-dir RUN --steps 12 --prompts 32 --samples 4 --max-new-tokens 8
"""

from __future__ import annotations

import time

LAUNCHED = time.time()  # before the heavy imports: they are part of the start-up

import argparse  # noqa: E402

import contender  # noqa: E402

# The project's PROMPT_FORMAT ("<image>\n{prompt}\n") as a chat template over one user turn.
CHAT_TEMPLATE = ("{% for message in messages %}{% for part in message['content'] %}"
                 "{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}\n{% endif %}"
                 "{% endfor %}{% endfor %}")


def timed(method, phase: str, marks: dict):
    """``method`` adding its wall seconds to ``marks[phase]``."""
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            marks[phase] += time.perf_counter() - start
    return run


def main() -> None:
    parser = contender.arguments(__doc__)
    args = parser.parse_args()
    launched = args.launched_at or LAUNCHED

    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from mmrlhf.data.digits import gold_reward
    from mmrlhf.stages.common import policy_path
    from mmrlhf.stages.data import decode_images

    torch.set_num_threads(args.threads)
    cfg, batches = contender.prompt_batches(args)
    sft = str(policy_path(cfg, "sft"))
    model = AutoModelForImageTextToText.from_pretrained(sft, dtype=torch.float32, attn_implementation="eager")
    for param in model.model.vision_tower.parameters():
        param.requires_grad_(False)
    processor = AutoProcessor.from_pretrained(sft)
    processor.chat_template = CHAT_TEMPLATE
    processor.tokenizer.padding_side = "left"
    rows = []
    for table in batches:
        for record, image in zip(table.to_pylist(), decode_images(table, cfg.data.media)):
            pil = Image.fromarray(image).convert("RGB")
            rows.append({"prompt": [{"role": "user", "content": record["prompt"]}], "image": pil,
                         "reference": record["reference"]})

    def reward(prompts, completions, reference, **_):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return gold_reward(texts, reference, [""] * len(texts))

    steps: list[dict[str, float]] = []
    marks = {"first_step_start": None}

    class Timing(TrainerCallback):
        def on_step_begin(self, *_, **__):
            marks["first_step_start"] = marks["first_step_start"] or time.time()
            marks["step_start"] = time.perf_counter()
            marks.update(rollout=0.0, generate=0.0, score=0.0)

        def on_step_end(self, *_, **__):
            seconds = time.perf_counter() - marks["step_start"]
            steps.append({"time/step_seconds": seconds, "time/update": seconds - marks["rollout"],
                          **{f"time/{phase}": marks[phase] for phase in ("rollout", "generate", "score")}})

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "completions/mean_length" in logs and steps:
                steps[-1]["tokens"] = logs["completions/mean_length"] * args.prompts * args.samples

    config = GRPOConfig(
        output_dir=str(args.scratch), per_device_train_batch_size=args.prompts * args.samples,
        num_generations=args.samples, steps_per_generation=1, num_iterations=1, beta=0.0,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=cfg.rl.lr, max_steps=args.steps, shuffle_dataset=False, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, bf16=False, fp16=False, seed=cfg.seed,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True, gradient_checkpointing=False)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=processor, callbacks=[Timing()])
    for method, phase in (("_generate_and_score_completions", "rollout"), ("_generate", "generate"),
                          ("_calculate_rewards", "score")):
        setattr(trainer, method, timed(getattr(trainer, method), phase, marks))
    trainer.train()
    contender.emit(launched, marks["first_step_start"], steps, args.prompts * args.samples)


if __name__ == "__main__":
    main()
