"""``mmrlhf <stage>``: one subcommand per stage of the recipe, each reading the same config.

Every subcommand takes ``--config jobs/<x>.yaml`` and ``key=value`` overrides (see
:func:`mmrlhf.config.load_config`). Stages import their heavy dependencies lazily so that
``mmrlhf --help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from mmrlhf.agents.config import AgentConfig
from mmrlhf.cli_help import COMMANDS
from mmrlhf.config import ConfigError, RunConfig, load_config
from mmrlhf.errors import CheckpointUnreachable


def _data(cfg: RunConfig, args: argparse.Namespace) -> None:
    from mmrlhf.stages.data import prepare_data

    prepare_data(cfg, rebuild=True, force=args.force)


def _sft(cfg: RunConfig, args: argparse.Namespace) -> None:
    from mmrlhf.stages.sft import run_sft

    run_sft(cfg, force=args.force)


def _feedback(cfg: RunConfig, args: argparse.Namespace) -> None:
    from mmrlhf.stages.feedback import run_feedback_simulation

    run_feedback_simulation(cfg, force=args.force)


def _feedback_import(cfg: RunConfig, args: argparse.Namespace) -> None:
    from mmrlhf.stages.feedback_import import run_feedback_import

    run_feedback_import(cfg, args.file, args.kind, append=args.append, force=args.force)


def _feedback_sample(cfg: RunConfig, args: argparse.Namespace) -> None:
    from mmrlhf.stages.feedback_sample import run_feedback_sample

    run_feedback_sample(cfg, args.kind, policy=args.policy, out=args.out, gold_fraction=args.gold_fraction)


def _feedback_label(cfg: RunConfig, args: argparse.Namespace) -> None:
    from mmrlhf.stages.feedback_label import serve_tasks
    from mmrlhf.stages.feedback_sample import default_tasks_dir

    serve_tasks(args.tasks or default_tasks_dir(cfg), **_page_options(cfg, args))


def _feedback_export_label_studio(cfg: RunConfig, args: argparse.Namespace) -> None:
    from mmrlhf.feedback.label_studio import export_label_studio
    from mmrlhf.stages.feedback_sample import default_tasks_dir

    folder = export_label_studio(args.tasks or default_tasks_dir(cfg))
    print(f"feedback export-label-studio: {folder} (import tasks.json into a project whose labeling "
          "interface is config.xml)")


def _page_options(cfg: RunConfig, args: argparse.Namespace) -> dict:
    return {"host": args.host, "port": args.port, "token": args.token, "seed": cfg.seed,
            "repeat_fraction": args.repeat_fraction, "replicas": args.replicas}


def _add_page_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; any other than 127.0.0.1 "
                   "requires an annotator token (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--token", help="annotator token (default: a random one when --host is not loopback)")
    p.add_argument("--replicas", type=int, default=1, help="Serve replicas of the page (default 1)")
    p.add_argument("--repeat-fraction", type=float, default=0.05,
                   help="share of pairs shown again with sides swapped, for self-consistency (default 0.05)")


def _reward(cfg: RunConfig, args: argparse.Namespace) -> None:
    from mmrlhf.stages.reward_train import run_reward_training

    metrics = run_reward_training(cfg, force=args.force, append=args.append)
    if args.swap:
        from mmrlhf.cluster import init_ray
        from mmrlhf.stages.rl import swap_reward_weights

        init_ray()  # joins the RL stage's cluster at RAY_ADDRESS
        swap_reward_weights(cfg, int(metrics["reward/version"]))
        print(f"reward: version {metrics['reward/version']} swapped into the running reward deployment")


def _rl(cfg: RunConfig, args: argparse.Namespace) -> None:
    from mmrlhf.stages.rl import run_rl

    run_rl(cfg, resume=args.resume, force=args.force)


def _eval(cfg: RunConfig, args: argparse.Namespace) -> None:
    if args.human:
        _eval_human(cfg, args)
        return
    from mmrlhf.stages.eval import print_metrics, run_eval

    print_metrics(run_eval(cfg, args.policy or "sft", force=args.force), cfg.eval.split)


def _eval_human(cfg: RunConfig, args: argparse.Namespace) -> None:
    from mmrlhf.stages.eval_human import human_eval_dir, human_eval_report, prepare_human_eval, print_human_eval
    from mmrlhf.stages.feedback_label import serve_tasks

    if not args.report:
        tasks = human_eval_dir(cfg) / "tasks"
        if not tasks.exists():
            prepare_human_eval(cfg, args.policy or "rl", args.baseline)
        serve_tasks(tasks, **_page_options(cfg, args))
    print_human_eval(human_eval_report(cfg))


def _retrieve(cfg: RunConfig, args: argparse.Namespace) -> None:
    from mmrlhf.stages.retrieve import format_retrieval, run_retrieve

    rows = run_retrieve(cfg, query=args.query, image=args.image, split=args.split, k=args.k, model=args.model,
                        out=args.out, force=args.force)
    print(format_retrieval(rows))


def _train(cfg: RunConfig, args: argparse.Namespace) -> None:
    from mmrlhf.stages.train import run_train

    run_train(cfg, resume=args.resume)


def _agent_train(cfg: AgentConfig, args: argparse.Namespace) -> None:
    from mmrlhf.agents.train import run_agent_train

    run_agent_train(cfg)


def _add_config_args(p: argparse.ArgumentParser, force: bool = True) -> None:
    p.add_argument("--config", help="experiment YAML, e.g. jobs/digits.yaml")
    if force:
        p.add_argument("--force", action="store_true",
                       help="skip the lineage checks: use stale inputs, replace outputs others were made from")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rl.steps=4 model.policy=tiny")


def _stage_parser(sub, name: str, key: str, fn: Callable, force: bool = True) -> argparse.ArgumentParser:
    """A subcommand whose --help says what it reads and writes and lists its config keys (``COMMANDS[key]``)."""
    entry = COMMANDS[key]
    p = sub.add_parser(name, help=entry.summary, description=entry.summary, epilog=entry.epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(p, force=force)
    p.set_defaults(fn=fn, help_entry=entry)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``mmrlhf`` argument parser (one subparser per stage)."""
    parser = argparse.ArgumentParser(prog="mmrlhf", description="One subcommand per stage of the RLHF recipe, "
                                     "each reading the same config (--config jobs/<x>.yaml, key=value overrides).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in (("data", _data), ("sft", _sft), ("rl", _rl), ("train", _train)):
        p = _stage_parser(sub, name, name, fn, force=name != "train")
        if name in ("rl", "train"):
            p.add_argument("--resume", action="store_true",
                           help="continue the RL stage from its newest complete checkpoint")

    feedback = sub.add_parser("feedback", help="human feedback: a simulated annotator or imported files")
    fsub = feedback.add_subparsers(dest="action", required=True)
    _stage_parser(fsub, "simulate", "feedback simulate", _feedback)
    p = fsub.add_parser("sample", help="K responses per feedback prompt from a policy, written as comparison tasks "
                        "for people (Parquet, JSONL, images, an HTML page)")
    p.add_argument("--kind", default="ranking", help="pairwise, ranking or rating: the shape `feedback import` reads back")
    p.add_argument("--policy", default="sft", help="'sft', 'rl', 'init' or a policy path")
    p.add_argument("--out", help="the tasks folder (default <run_dir>/feedback/tasks)")
    p.add_argument("--gold-fraction", type=float, default=0.1,
                   help="share of pairwise tasks whose gold-score answer scores annotators (digits task)")
    _add_config_args(p)
    p.set_defaults(fn=_feedback_sample)
    p = fsub.add_parser("label", help="serve comparison tasks to people on the labeling page (Ray Serve) until "
                        "Ctrl-C; answers go to <tasks>/answers, then `feedback import <tasks> --kind page`")
    p.add_argument("--tasks", help="the tasks folder (default <run_dir>/feedback/tasks)")
    _add_page_args(p)
    _add_config_args(p)
    p.set_defaults(fn=_feedback_label)
    p = fsub.add_parser("export-label-studio", help="write a pairwise or ranking tasks folder as Label Studio "
                        "tasks and labeling config (<tasks>/label_studio/); import its JSON export with "
                        "`feedback import FILE --kind label-studio`")
    p.add_argument("--tasks", help="the tasks folder (default <run_dir>/feedback/tasks)")
    _add_config_args(p)
    p.set_defaults(fn=_feedback_export_label_studio)
    p = _stage_parser(fsub, "import", "feedback import", _feedback_import)
    p.add_argument("file", help="the feedback file; its rows' fields depend on --kind (see the README); "
                   "for --kind page, the tasks folder whose labeling-page answers to import")
    # no argparse choices: the kinds live with the importer, whose imports would slow `--help`
    p.add_argument("--kind", required=True, help="pairwise, ranking, rating, page (the labeling page's answers), "
                   "or a published shape: rlhf-v (RLHF-V / RLAIF-V), llava-rlhf, vlfeedback, povid, trl, label-studio "
                   "(a Label Studio JSON export of `feedback export-label-studio` tasks)")
    p.add_argument("--append", action="store_true", help="add to the run's existing preference pairs")

    reward = sub.add_parser("reward", help="reward model")
    rsub = reward.add_subparsers(dest="action", required=True)
    p = _stage_parser(rsub, "train", "reward train", _reward)
    p.add_argument("--append", action="store_true", help="continue from the current reward model on the pairs "
                   "now in feedback/pairs.parquet (new ones appended), as version + 1; allowed while RL runs")
    p.add_argument("--swap", action="store_true", help="then swap the new weights into the running RL stage's "
                   "reward deployment in place (joins the cluster at RAY_ADDRESS)")

    agent = sub.add_parser("agent", help="RLHF for control agents: RLlib PPO/SAC on a Serve reward model "
                           "learned from clip preferences")
    asub = agent.add_subparsers(dest="action", required=True)
    entry = COMMANDS["agent train"]
    p = asub.add_parser("train", help=entry.summary, description=entry.summary,
                        epilog=f"reads:  {entry.reads}\nwrites: {entry.writes}",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(p, force=False)
    p.set_defaults(fn=_agent_train, help_entry=entry, schema=AgentConfig)

    p = _stage_parser(sub, "eval", "eval", _eval)
    p.add_argument("--policy", help="'sft', 'rl', 'init' or a policy path (default sft; rl with --human)")
    p.add_argument("--human", action="store_true", help="human evaluation: write blind pairs of --baseline vs "
                   "--policy into <run_dir>/eval/human/tasks (once), serve them until Ctrl-C, then report")
    p.add_argument("--baseline", default="sft", help="with --human: the policy compared against (default sft)")
    p.add_argument("--report", action="store_true", help="with --human: only report the answers so far")
    _add_page_args(p)

    p = _stage_parser(sub, "retrieve", "retrieve", _retrieve)
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--query", help="text -> images: the text whose closest images to list")
    query.add_argument("--image", help="image -> texts: an image file whose closest texts of the split to list")
    p.add_argument("--split", default="test", help="the data split searched: sft, feedback, val or test (default test)")
    p.add_argument("--k", type=int, default=5, help="how many results (default 5)")
    p.add_argument("--model", default="trained", help="the joint embedding: 'trained' (reward/model), 'untrained' "
                   "(model.reward before training) or a reward model folder (default trained)")
    p.add_argument("--out", help="the JSONL file written (default <run_dir>/retrieve/results.jsonl)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mmrlhf`` console script; returns the process exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills `overrides` with the first run of positionals, so in `feedback import FILE
    # --kind K key=value` the overrides after the options come back unparsed
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides += extra
    try:
        cfg = load_config(args.config, args.overrides, schema=getattr(args, "schema", None))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"mmrlhf: config error: {exc}", file=sys.stderr)
        return 2
    try:
        args.fn(cfg, args)
    except KeyboardInterrupt:
        print(args.help_entry.interrupted(), file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, ValueError, CheckpointUnreachable) as exc:
        # The user's input or run directory (a missing stage output, a bad record, a refused resume):
        # the message names it, a traceback would bury it.
        if os.environ.get("MMRLHF_TRACEBACK"):
            raise
        print(f"mmrlhf {args.command}: {exc}", file=sys.stderr)  # MMRLHF_TRACEBACK=1 shows the traceback
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
