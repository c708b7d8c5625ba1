"""Does self-supervised pretraining on the training images help? Side by side, at CPU size, on 2 cores.

    python benchmarks/bench_pretraining.py                                  # real photos (3 seeds), synthetic, digits
    python benchmarks/bench_pretraining.py --tasks real-photos --seeds 0 1 2 --levers resolution-96 dino
    python benchmarks/bench_pretraining.py --smoke                          # two steps of each row

For each task and seed:

- (a) ``train.py`` from scratch with the default recipe (the baseline a user gets today);
- (b) ``pretrain.py`` on the training split's images (the default method), then ``train.py --init_from`` it with the
  same fine-tuning budget as (a) (the fine-tuning recipe is picked automatically);
- (c) each lever asked for with ``--levers``: ``dino`` (pretrain.py --method dino, multi-crop), ``layer-decay``
  (the same pretrained backbone fine-tuned with --layer_decay 0.75), ``resolution-96`` (train.py from scratch at
  96 px instead of 64; real photos only), ``long-schedule`` (train.py from scratch for 3x the epochs; real photos
  only), ``few-photos`` (train.py from scratch with ``--recipe few-photos``, the route docs/training.md gives for
  one's own photos: vit-pico, batches of 32, 120 epochs; on the synthetic poses every recipe is resized for a CPU,
  so there it is the same run as (a)).

Tasks: ``real-photos`` (the 415 real web photos of 7 poses of docs/data.md's real-photo collection, prepared with
``python -m yoga82 prepare``; vit-pico at 64 px, batch 32, level-3 test top-1 on 103 photos), ``synthetic`` (the
built-in poses out of the box, level-3 test top-1), ``digits`` (scikit-learn's digits as a 32 px image folder,
validation top-1). Every row runs the scripts as a user does (subprocesses) and reads their results files; times are
whole commands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_learning import (  # noqa: E402
    DIGITS_MODEL,
    DIGITS_SCHEDULE,
    PROJECT,
    REAL_PHOTOS_EPOCHS,
    REAL_PHOTOS_SCHEDULE,
    digits_folder,
    real_photos_folder,
    task_parser,
)
from common import finish, machine_summary, run_script, work_folder  # noqa: E402

PRETRAIN = PROJECT / "pretrain.py"
TRAIN = PROJECT / "train.py"
# Pretraining budgets, in epochs of the training images (the same for every method).
PRETRAIN_EPOCHS = {"real-photos": 100, "synthetic": 10, "digits": 30}


def task_flags(task: str, work: Path, given: Path | None, smoke: bool, synthetic_epochs: float | None = None
               ) -> tuple[list[str], list[str], list[str], str]:
    """(data flags for both scripts, train.py's schedule, pretrain.py's schedule, the results key of the score)."""
    if task == "real-photos":
        data = ["--dataset_name", str(real_photos_folder(work, given)), "--label_level", "3"]
        train = [*REAL_PHOTOS_SCHEDULE, "--num_train_epochs", str(REAL_PHOTOS_EPOCHS)]
        pre = ["--model_preset", "vit-pico", "--num_train_epochs", str(PRETRAIN_EPOCHS[task])]
        score = "test_accuracy"
    elif task == "synthetic":
        data, score = ["--label_level", "3"], "test_accuracy"
        train = ["--num_train_epochs", str(synthetic_epochs)] if synthetic_epochs else []
        pre = ["--num_train_epochs", str(PRETRAIN_EPOCHS[task])]
    else:
        digits = digits_folder(work, smoke)
        data = ["--train_dir", str(digits / "train"), "--validation_dir", str(digits / "validation"),
                "--label_column", "label", "--model_preset", "vit-pico", "--config_overrides", DIGITS_MODEL]
        train = [*DIGITS_SCHEDULE, "--hflip", "0"]
        pre = ["--num_train_epochs", str(PRETRAIN_EPOCHS[task])]
        score = "eval_accuracy"
    if smoke:
        train, pre = [*train, "--max_steps", "2"], [*pre, "--max_steps", "2"]
    return data, train, pre, score


def rows_of(task: str, seed: int, work: Path, env: dict[str, str], levers: list[str], given: Path | None,
            smoke: bool, baselines: bool = True, synthetic_epochs: float | None = None) -> list[dict[str, Any]]:
    data, train, pre, score = task_flags(task, work, given, smoke, synthetic_epochs)
    seeded = ["--seed", str(seed)]
    runs = work / "runs" / f"{task}-seed{seed}"
    rows = []

    def add(name: str, finetuned: dict[str, Any], pretrained: dict[str, Any] | None = None) -> None:
        results = finetuned.get("test_results") if score.startswith("test") else finetuned.get("eval_results")
        row = dict(task=task, seed=seed, run=name, accuracy=results[score], wall_s=finetuned["wall_s"])
        if pretrained is not None:
            record = pretrained["pretrain_results"]
            row.update(pretrain_s=pretrained["wall_s"], wall_s=finetuned["wall_s"] + pretrained["wall_s"],
                       knn_start=record["knn_top1_at_initialisation"], knn_end=record["knn_top1"],
                       knn_curve=[e.get("eval_knn_top1") for e in record["evaluations"]])
        rows.append(row)
        print(f"[{task} seed {seed}] {name}: top-1 {row['accuracy']:.3f}, {row['wall_s']:.0f} s", file=sys.stderr,
              flush=True)

    if baselines:
        add("(a) train.py from scratch (default recipe)",
            run_script(TRAIN, [*data, *train, *seeded], runs / "scratch", env))
    if baselines or "layer-decay" in levers:
        simclr = run_script(PRETRAIN, [*data, *pre, *seeded], runs / "pretrain-simclr", env)
    if baselines:
        add("(b) pretrain.py (simclr), then train.py --init_from", run_script(
            TRAIN, [*data, *train, *seeded, "--init_from", str(runs / "pretrain-simclr")], runs / "tuned-simclr",
            env), simclr)
    if "layer-decay" in levers:
        add("(c) as (b), fine-tuned with --layer_decay 0.75", run_script(
            TRAIN, [*data, *train, *seeded, "--init_from", str(runs / "pretrain-simclr"), "--layer_decay", "0.75"],
            runs / "tuned-simclr-decay", env), simclr)
    if "resolution-96" in levers and task == "real-photos":
        add("(c) train.py from scratch at 96 px (--image_size 96)", run_script(
            TRAIN, [*data, *train, *seeded, "--image_size", "96"], runs / "scratch-96px", env))
    if "long-schedule" in levers and task == "real-photos":
        add(f"(c) train.py from scratch, {3 * REAL_PHOTOS_EPOCHS} epochs", run_script(
            TRAIN, [*data, *train, *seeded, "--num_train_epochs", str(3 * REAL_PHOTOS_EPOCHS)], runs / "scratch-long",
            env))
    if "few-photos" in levers:
        extra = ["--hflip", "0"] if task == "digits" else []  # digits are not mirror-symmetric, as in (a)
        add("(c) train.py from scratch, --recipe few-photos", run_script(
            TRAIN, [*data, *extra, *seeded, "--recipe", "few-photos", *(["--max_steps", "2"] if smoke else [])],
            runs / "scratch-few-photos", env))
    if "dino" in levers:
        dino = run_script(PRETRAIN, [*data, *pre, *seeded, "--method", "dino", "--local_views", "4"],
                          runs / "pretrain-dino", env)
        add("(c) pretrain.py --method dino (4 local views), then train.py --init_from", run_script(
            TRAIN, [*data, *train, *seeded, "--init_from", str(runs / "pretrain-dino")], runs / "tuned-dino", env),
            dino)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| task | seed | run | top-1 | k-NN top-1 (start -> end) | time (pretraining) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        knn = f"{r['knn_start']:.3f} -> {r['knn_end']:.3f}" if r.get("knn_end") is not None else "-"
        pre = f" ({r['pretrain_s'] / 60:.1f})" if "pretrain_s" in r else ""
        lines.append(f"| {r['task']} | {r['seed']} | {r['run']} | {r['accuracy']:.3f} | {knn} | "
                     f"{r['wall_s'] / 60:.1f} min{pre} |")
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> str:
    """Each run's mean top-1 over the seeds, and its difference from (a)'s mean."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        by_run: dict[str, list[float]] = {}
        for r in rows:
            if r["task"] == task:
                by_run.setdefault(r["run"], []).append(r["accuracy"])
        base = sum(by_run[next(iter(by_run))]) / len(by_run[next(iter(by_run))])
        for name, values in by_run.items():
            mean = sum(values) / len(values)
            out.append(f"{task}: {name}: mean {mean:.3f} over {len(values)} seed(s) "
                       f"({', '.join(f'{v:.3f}' for v in values)}), {mean - base:+.3f} against (a)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = task_parser(__doc__, ["real-photos", "synthetic", "digits"], "two steps per run (digits: 200 of them)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of the real-photo rows")
    parser.add_argument("--levers", nargs="*", default=[],
                        choices=["dino", "layer-decay", "resolution-96", "long-schedule", "few-photos"])
    parser.add_argument("--levers_only", action="store_true", help="skip the (a) and (b) rows")
    args = parser.parse_args(argv)
    with work_folder("vit-yoga-bench-pretraining-", args.work_dir) as (work, env):
        rows = [row for task in args.tasks for seed in (args.seeds if task == "real-photos" else args.seeds[:1])
                for row in rows_of(task, seed, work, env, args.levers, args.real_photos, args.smoke,
                                   baselines=not args.levers_only, synthetic_epochs=args.synthetic_epochs)]
    report = {"machine": machine_summary(), "rows": rows}
    return finish(report, args.json, f"Machine: {report['machine']}\n\n{format_table(rows)}\n\n{summary(rows)}")


if __name__ == "__main__":
    sys.exit(main())
