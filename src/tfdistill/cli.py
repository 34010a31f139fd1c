"""Command line: argument parsing and error presentation only; every command calls into the library.

    tfdistill train RECIPE [key=value ...] [--resume | --overwrite]
    tfdistill train --resume RUN_DIR|RUN_DIR/last.pt [key=value ...] [--accept-data-change]
    tfdistill eval CHECKPOINT [--data NAME] [key=value ...]
    tfdistill demo
    tfdistill cam --checkpoint A.pt [--checkpoint B.pt ...] --images DIR|SPLIT|DATASET [--num 8] [--out grid.png]
    tfdistill sweep SPEC.yaml [key=value ...] [--jobs N] [--gpus 0,1] [--dry-run] [--only GLOB] [--status]
    tfdistill sweep SPEC.yaml --executor slurm [--partition P] [--time 4:00:00] [--gpus-per-job 1] ...
    tfdistill report RUNS_DIR [--out DIR] [--metric last|best]
    tfdistill results [RESULTS_DIR] [--readme README.md] [--docs docs/results.md] [--check]
    tfdistill taps MODEL [--image-size S] [--num-classes N] [--taps a,b,c]
    tfdistill models | methods
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from .errors import EXIT_PIPE, TfdError, exit_code, signal_name


def _split_config_and_overrides(args: list[str]) -> tuple[str | None, list[str]]:
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, list(args)


# ------------------------------------------------------------------------------------------- commands
def cmd_train(ns: argparse.Namespace) -> int:
    from .config import load_config
    from .engine import train
    from .errors import ConfigError
    from .recipes import list_recipes

    args, resume = list(ns.args), ns.resume  # resume: None (no --resume), True (bare flag) or its value
    # --out-dir / --device: the option spelling the other commands use, for out_dir= / engine.device=
    aliases = ([f"out_dir={ns.out_dir}"] if ns.out_dir is not None else []) + \
        ([f"engine.device={ns.device}"] if ns.device is not None else [])
    if isinstance(resume, str):
        from .engine.resume import looks_like_run_target

        if not looks_like_run_target(resume):  # `train --resume RECIPE key=value ...`: the retyped form
            args, resume = [resume, *args], True
    if resume is None and not args:
        raise ConfigError(f"train needs a recipe: tfdistill train RECIPE [key=value ...], one of "
                          f"{', '.join(list_recipes())} (see `tfdistill recipes`), or a YAML file; "
                          f"or --resume RUN_DIR to continue a run")
    if resume is True and not args:
        raise ConfigError("--resume needs the run to continue: tfdistill train --resume RUN_DIR (or RUN_DIR/last.pt), "
                          "or the recipe and overrides the run was started with")
    args += aliases
    if isinstance(resume, str):
        from .engine.resume import resume_config

        path, overrides = None, args
        if args and "=" not in args[0]:
            raise ConfigError(f"--resume {resume} continues that run from its config.yaml; give only key=value "
                              f"overrides, not {args[0]!r}")
        cfg = resume_config(resume, overrides)
    else:
        path, overrides = _split_config_and_overrides(args)
        cfg = load_config(path, overrides)
    if ns.print_config:
        from .config import to_yaml

        print(to_yaml(cfg), end="")
        return 0
    if resume:
        from .engine.resume import prepare_resume

        prepare_resume(cfg, dry=ns.dry_run, accept_data_change=ns.accept_data_change)  # something to resume, and cfg may resume it (or extend it)
    if ns.dry_run:
        from .engine.dryrun import dry_run

        dry_run(cfg, resume=bool(resume), overwrite=ns.overwrite)
        return 0
    if ns.accept_data_change and not resume:
        raise ConfigError("--accept-data-change goes with --resume: it lets a run continue on data other than those "
                          "recorded in its fingerprint.json")
    # its last line, "finished: ...", is the result
    train(cfg, resume=bool(resume), overwrite=ns.overwrite, accept_data_change=ns.accept_data_change)
    return 0


def cmd_eval(ns: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint

    overrides = list(ns.overrides)
    if ns.data:
        overrides.append(f"data.name={ns.data}")
    res = evaluate_checkpoint(ns.checkpoint, overrides, device=ns.device)
    if ns.json:
        res.pop("text", None)
        print(json.dumps(res))
    else:
        top5 = f"top-5 {res['top5']:.2f}%  " if res.get("top5") is not None else ""  # (more than 5 classes)
        print(f"{res['model']} on {res['dataset']} ({res['count']} images): {res.pop('text')}  "
              f"{top5}loss {res['loss']:.4f}"
              + (f"  ({res['checkpoint']})" if os.path.isdir(ns.checkpoint) else ""))
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    if ns.epochs is not None and ns.epochs < 1:
        from .errors import ConfigError

        raise ConfigError(f"--epochs {ns.epochs}: give at least 1 epoch (default: the demo recipe's)")
    run_demo(out_dir=ns.out_dir, epochs=ns.epochs, model=ns.model)
    return 0


def cmd_sweep(ns: argparse.Namespace) -> int:
    from .sweep import plan_sweep, run_sweep, sweep_status

    gpus = [g for g in (ns.gpus or "").split(",") if g.strip()]
    plan = plan_sweep(ns.spec, ns.overrides, out_dir=ns.out_dir)
    if ns.status:
        counts = sweep_status(plan, only=ns.only)
        return 1 if counts.get("failed") else 0
    executor = None
    slurm_only = [f"--{k.replace('_', '-')}" for k in ("partition", "time", "gpus_per_job", "cpus_per_job",
                                                        "array_parallelism") if getattr(ns, k) is not None]
    if slurm_only and ns.executor != "slurm":
        from .errors import ConfigError

        raise ConfigError(f"{', '.join(slurm_only)}: options of --executor slurm (executors: local, slurm)")
    if ns.executor == "slurm":
        from .sweep.slurm import SlurmExecutor, launcher_options

        executor = SlurmExecutor(launcher_options(
            plan.spec.launcher, partition=ns.partition, time=ns.time, gpus_per_job=ns.gpus_per_job,
            cpus_per_job=ns.cpus_per_job, array_parallelism=ns.array_parallelism))
    pack = ns.pack
    if ns.batch_seeds or ns.batch_weights:  # the old names: every compatible run in one group, or --batch-max each
        if pack is not None:
            from .errors import ConfigError

            raise ConfigError("--batch-seeds/--batch-weights are old names of --pack; give only --pack K")
        pack = ns.batch_max
    elif ns.batch_max:
        from .errors import ConfigError

        raise ConfigError("--batch-max needs --batch-seeds or --batch-weights (or use --pack K)")
    try:
        result = run_sweep(plan, jobs=ns.jobs, gpus=gpus, dry_run=ns.dry_run, only=ns.only,
                           retry_failed=not ns.skip_failed, pack=pack, executor=executor)
    except KeyboardInterrupt as exc:  # the runs' own lines are in their train.log; the sweep's state is saved
        exc.args = (f"sweep {plan.spec.name} stopped by {signal_name(exc)}; its state is saved in {plan.sweep_dir}: "
                    f"re-run the same command to continue",)
        raise
    return result.exit_code


def cmd_child(ns: argparse.Namespace) -> int:
    """Hidden: a sweep's training subprocess (:func:`tfdistill.sweep.executors.train_child`)."""
    from .sweep.executors import train_child

    return train_child(ns.configs, ns.modes.split(","))


def cmd_report(ns: argparse.Namespace) -> int:
    import glob
    from pathlib import Path

    from .errors import ConfigError
    from .report import make_report

    baselines = []
    for pattern in ns.baseline or []:
        found = sorted(Path(p) for p in glob.glob(pattern) if (Path(p) / "config.yaml").is_file())
        if not found:
            raise ConfigError(f"--baseline {pattern}: no run directory (a folder with config.yaml) matches")
        baselines += [(p, p.as_posix()) for p in found]
    report = make_report(ns.runs_dir, out_dir=ns.out, metric=ns.metric, plots=not ns.no_plots, baselines=baselines)
    print(report.markdown)
    print(f"written: {', '.join(str(p) for p in report.files)}")
    return 0


def cmd_results(ns: argparse.Namespace) -> int:
    from .report.results import build_results

    readme = None if ns.no_readme else ns.readme
    files = build_results(ns.results_dir, readme, check=ns.check, plots=not ns.no_plots,
                          docs=None if ns.no_docs else ns.docs)
    if ns.check:
        if files:
            print(f"tfdistill: stale: {', '.join(str(f) for f in files)} differ from what `tfdistill results` "
                  "computes from the committed runs; run it and commit", file=sys.stderr)
            return 1
        print(f"up to date: the reports under {ns.results_dir} and the results blocks match the committed runs")
        return 0
    print(f"written: {', '.join(str(f) for f in files)}" if files else "nothing changed")
    return 0


def cmd_cam(ns: argparse.Namespace) -> int:
    from .cam import cam_grid

    labels = [x.strip() for x in ns.labels.split(",")] if ns.labels else None
    g = cam_grid(ns.checkpoint, ns.images, num=ns.num, out=ns.out, labels=labels, target=ns.target, device=ns.device)
    print(f"wrote {g.path}: Grad-CAM++ of {', '.join(g.layers)} for {len(g.true)} images x {len(g.layers)} checkpoints")
    return 0


def cmd_models(ns: argparse.Namespace) -> int:
    from .models import create_model, list_models

    names = list_models(include_torchvision=ns.torchvision)
    for name in names:
        if ns.params and not name.startswith("torchvision."):
            n = sum(p.numel() for p in create_model(name, num_classes=ns.num_classes).parameters())
            print(f"{name:<16} {n:>12,}")
        else:
            print(name)
    print("# beyond the zoo: any torchvision classification model as torchvision.<name> (e.g. torchvision.resnet18; "
          "--torchvision lists them) and any timm model as timm.<name> (e.g. timm.convnext_atto; "
          "pip install 'tfdistill[timm]')")
    return 0


def cmd_taps(ns: argparse.Namespace) -> int:
    import torch

    from .errors import ConfigError
    from .features import plan_taps
    from .models import create_model

    if ns.image_size is None:
        ns.image_size = 224 if "." in ns.model else 32
    if ns.image_size < 1 or ns.num_classes < 1:
        raise ConfigError(f"--image-size and --num-classes must be positive, got {ns.image_size}, {ns.num_classes}")
    kwargs = {}
    for kv in ns.kwargs:
        key, _, value = kv.partition("=")
        try:
            kwargs[key] = json.loads(value)
        except ValueError:
            kwargs[key] = value
    model = create_model(ns.model, num_classes=ns.num_classes, **kwargs)
    layers = [t.strip() for t in ns.taps.split(",") if t.strip()] if ns.taps else "auto"
    x = torch.randn(2, 3, ns.image_size, ns.image_size)
    try:
        plan = plan_taps(model, x, layers, model_name=ns.model)
    except ConfigError:  # the model ran: too few usable maps, or a named tap that is no map -- say that
        raise
    except (RuntimeError, AssertionError, ValueError) as exc:  # the model refuses this input size
        hint = f" (a timm model built for one size takes img_size={ns.image_size})" if ns.model.startswith("timm.") \
            and "img_size" not in kwargs else ""
        raise ConfigError(f"{ns.model} does not run on a 3x{ns.image_size}x{ns.image_size} input: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; try another "
                          f"--image-size{hint}") from None
    print(plan)
    return 0


def cmd_recipes(ns: argparse.Namespace) -> int:
    from .recipes import list_recipes, recipes_dir

    print(f"# recipes in {recipes_dir()} (use a name or a path with `tfdistill train`)")
    for name in list_recipes():
        print(name)
    print("# sweep specs (use a name or a path with `tfdistill sweep`)")
    for name in list_recipes(sweeps=True):
        print(name)
    return 0


def cmd_methods(ns: argparse.Namespace) -> int:
    from .methods import FAMILIES, list_methods, method_uses, preset_family, resolve_preset

    names = list_methods()
    width = max(len(n) for n in names) + 1
    for family in FAMILIES:
        members = [n for n in names if preset_family(n) == family]
        if not members:
            continue
        print(f"{family}:")
        for name in members:
            teacher = "teacher" if method_uses(name).teacher else "no teacher"
            print(f"  {name:<{width}} {teacher:<10} {resolve_preset(name).summary}")
    print("Combine with '+', e.g. tfd+kd; any method takes method.label_smoothing=0.1.")
    return 0


# ------------------------------------------------------------------------------------------- parser
EXIT_CODES_HELP = """exit codes (every command; docs/faults.md):
  0    success
  1    a run failed while training (loss NaN/inf; a sweep with failed runs), or an internal error
  2    bad input: usage, config, names, a data set problem (missing, bad files, too few images), run
       directory (exists, in use), checkpoint
  4    the output location cannot be written (read-only, disk full, vanished, no permission)
  130  stopped by SIGINT (Ctrl-C); 143: stopped by SIGTERM -- both graceful: the stop reason is the last
       line of train.log and the last finished epoch is resumable (--resume, or the same sweep command)
  141  the output pipe was closed (... | head)"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tfdistill", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Teacher-free Feature Distillation: train, evaluate and compare distillation methods.",
        epilog=EXIT_CODES_HELP)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train one run from a YAML recipe + key=value overrides",
                       description="Train one run. Examples: tfdistill train cifar100/paper seed=1; "
                                   "tfdistill train --resume runs/<run>")
    t.add_argument("args", nargs="*", metavar="RECIPE|key=value",
                   help="a recipe (a name from `tfdistill recipes`, or a YAML file) followed by dotted overrides, "
                        "e.g. optim.lr=0.1 method.name=tfd")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR|last.pt",
                   help="continue a run from its last.pt: give its run directory (or last.pt), which holds its "
                        "config, plus optional resume-free overrides (engine.device=..., a larger epochs=N to "
                        "extend a multistep run); or retype the run's recipe and overrides followed by --resume. "
                        "Never starts a new run")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.add_argument("--accept-data-change", action="store_true",
                   help="with --resume: continue on data other than those the run was trained on (by default "
                        "refused: fingerprint.json records the data's file names and sizes, class names and subset); "
                        "the change is recorded in fingerprint.json")
    t.add_argument("--out-dir", default=None, metavar="DIR", help="same as out_dir=DIR (parent of the run directory)")
    t.add_argument("--device", default=None, help="same as engine.device=... (auto | cpu | cuda | cuda:N | mps)")
    t.add_argument("--print-config", action="store_true",
                   help="print the resolved config (recipe + overrides, every key) as YAML and exit")
    t.add_argument("--dry-run", action="store_true",
                   help="build everything (data, model, method, taps) and print the run header; train and write "
                        "nothing")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on its dataset's test split")
    e.add_argument("checkpoint", help="a best.pt / last.pt written by tfdistill train, or a run directory (its best.pt, "
                                      "else its last.pt)")
    e.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the stored config, e.g. data.root=...")
    e.add_argument("--data", help="evaluate on another dataset (same classes), e.g. cifar10")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    e.add_argument("--json", action="store_true", help="print the result as one JSON line")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="offline demo: CE vs TFD on scikit-learn's digits, table + curves PNG")
    d.add_argument("--out-dir", default="runs", help="where the demo's run directories go (default: runs)")
    d.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the demo recipe's)")
    d.add_argument("--model", default=None, help="zoo model (default: the demo recipe's)")
    d.set_defaults(func=cmd_demo)

    sw = sub.add_parser("sweep", help="train a grid of runs (models x methods x seeds x variants) from a spec",
                        description="Train every run of a sweep spec (see configs/reproduce/). Re-running the same "
                                    "command skips finished runs, resumes interrupted ones and retries failed ones.")
    sw.add_argument("spec", metavar="SPEC.yaml", help="a sweep spec (path, or a name such as reproduce/table1)")
    sw.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every run, e.g. epochs=30")
    sw.add_argument("--jobs", type=int, default=1,
                    help="runs at a time (1: sequentially in this process; more: one subprocess each)")
    sw.add_argument("--gpus", default="",
                    help="comma-separated GPU ids: one subprocess per GPU (CUDA_VISIBLE_DEVICES)")
    sw.add_argument("--dry-run", action="store_true",
                    help="validate and list the runs with their status; train nothing")
    sw.add_argument("--only", action="append", metavar="GLOB",
                    help="only runs whose name or label matches (repeatable), e.g. --only 'resnet20_*' --only tfd")
    sw.add_argument("--out-dir", default=None, help="parent of the sweep folder (default: the spec's out_dir)")
    sw.add_argument("--skip-failed", action="store_true", help="do not retry runs that failed before")
    sw.add_argument("--pack", type=int, default=None, metavar="K",
                    help="train up to K compatible runs (same data, engine settings and epochs: any methods, seeds, "
                         "variants, students) as one packed group in one process, on CUDA from one graph; each "
                         "keeps its own run directory and equals its separate run; 1: no packing, 0: no limit "
                         "(default: 4 on CUDA, 1 on the CPU); --jobs/--gpus spread the groups")
    sw.add_argument("--batch-seeds", action="store_true", help="old name: --pack 0 (or --pack N with --batch-max N)")
    sw.add_argument("--batch-weights", action="store_true", help="old name: --pack 0 (or --pack N with --batch-max N)")
    sw.add_argument("--batch-max", type=int, default=0, metavar="N", help="with the old names: --pack N")
    sw.add_argument("--status", action="store_true",
                    help="show each run: done, failed, running, queued (in a cluster job), interrupted or pending")
    sw.add_argument("--executor", choices=("local", "slurm"), default="local",
                    help="local (default): train here (--jobs/--gpus); slurm: submit one job per packed group "
                         "through submitit (pip install -e '.[slurm]') and return; preempted or timed-out jobs are "
                         "requeued and resume from last.pt")
    sw.add_argument("--partition", default=None, help="slurm: the partition (spec: launcher.partition)")
    sw.add_argument("--time", default=None, metavar="H:MM:SS",
                    help="slurm: time limit per job, minutes or H:MM:SS (default 4:00:00); at the limit a job is "
                         "requeued and resumes from last.pt")
    sw.add_argument("--gpus-per-job", type=int, default=None, metavar="N", help="slurm: GPUs per job (default 1)")
    sw.add_argument("--cpus-per-job", type=int, default=None, metavar="N", help="slurm: CPUs per job (default 8)")
    sw.add_argument("--array-parallelism", type=int, default=None, metavar="N",
                    help="slurm: at most N jobs of the sweep at once (default: no limit)")
    sw.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("report", help="tables (mean +- std over seeds), gains over CE and plots from run directories",
                        description="Scan RUNS_DIR recursively for run directories and write report.md, report.csv, "
                                    "report.json and PNG plots.")
    rp.add_argument("runs_dir", metavar="RUNS_DIR", help="a sweep folder, a run directory or any folder above them")
    rp.add_argument("--out-dir", "--out", dest="out", default=None,
                    help="where to write the report (default: RUNS_DIR/report); --out is an alias")
    rp.add_argument("--metric", choices=("last", "best"), default="last",
                    help="the primary metric (top-1; mIoU for segmentation) used for gains and the bar chart: "
                         "last epoch (default, honest) or best epoch")
    rp.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    rp.add_argument("--baseline", action="append", metavar="RUN_DIR|GLOB",
                    help="finished runs of another folder to compare with as if trained in RUNS_DIR (repeatable; "
                         "e.g. 'results/x/runs/resnet20_ce_s*'); the report names where they came from")
    rp.set_defaults(func=cmd_report)

    rs = sub.add_parser("results", help="regenerate results/<name>/report and the README results blocks from the "
                                        "committed runs (--check: verify instead)",
                        description="For every results/<name>/ with a result.yaml: rewrite report/ (tfdistill "
                                    "report of its sweep folder) and the generated block of its README.md, then the "
                                    "full blocks in docs/results.md and the compact summary in the top-level "
                                    "README.md. Run it from the repository root.")
    rs.add_argument("results_dir", metavar="RESULTS_DIR", nargs="?", default="results")
    rs.add_argument("--readme", default="README.md", help="the README whose results block is rewritten")
    rs.add_argument("--no-readme", action="store_true", help="leave the top-level README alone")
    rs.add_argument("--docs", default="docs/results.md",
                    help="the page of the full generated blocks, relative to the repository (the folder above "
                         "RESULTS_DIR); created with a title and the markers when missing")
    rs.add_argument("--no-docs", action="store_true", help="leave the docs page alone")
    rs.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 naming the files that differ from what would be written")
    rs.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    rs.set_defaults(func=cmd_results)

    c = sub.add_parser("cam", help="Grad-CAM++ maps of the last stage, checkpoints side by side (paper Fig. 3)",
                       description="Grad-CAM++ maps (pytorch-grad-cam; pip install 'tfdistill[cam]') of each "
                                   "checkpoint's last stage over the same images, as a grid PNG. Example: tfdistill "
                                   "cam --checkpoint runs/ce/best.pt --checkpoint runs/tfd/best.pt --images test "
                                   "--labels CE,TFD")
    c.add_argument("--checkpoint", action="append", required=True, metavar="CKPT.pt",
                   help="a best.pt / last.pt of tfdistill train (repeat for several columns)")
    c.add_argument("--images", required=True, metavar="DIR|SPLIT|DATASET",
                   help="a folder of images (class-named subfolders give true labels), 'test'/'train' (that split of "
                        "the first checkpoint's dataset) or a dataset name (its test split)")
    c.add_argument("--num", type=int, default=8, help="number of images (rows), picked evenly spaced (default 8)")
    c.add_argument("--out", default="grid.png",
                   help="output PNG file (default grid.png); a file, so not --out-dir as for the folders of demo, "
                        "sweep and report")
    c.add_argument("--labels", default=None, help="comma-separated column titles, one per checkpoint")
    c.add_argument("--target", choices=("pred", "true"), default="pred",
                   help="explain the predicted class (default) or the true one")
    c.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    c.set_defaults(func=cmd_cam)

    m = sub.add_parser("models", help="list the model zoo (torchvision.<name> and timm.<name> work too)")
    m.add_argument("--params", action="store_true", help="also print parameter counts")
    m.add_argument("--num-classes", type=int, default=100)
    m.add_argument("--torchvision", action="store_true", help="also list torchvision classification models")
    m.set_defaults(func=cmd_models)

    tp = sub.add_parser("taps", help="show which layers feature distillation taps in a model (the tap plan)",
                        description="Build MODEL (a zoo name, torchvision.<name>, timm.<name>, a segmentation model "
                                    "such as deeplabv3_resnet18 or smp.<Arch>; random weights), run "
                                    "one forward pass and print its tap plan: per tap the module path, the (C,H,W) map, "
                                    "the stride, the rule that chose it and the TFD terms it feeds. Examples: "
                                    "tfdistill taps timm.vit_tiny_patch16_224; "
                                    "tfdistill taps smp.Unet encoder_name='\"mobilenet_v2\"' --image-size 64")
    tp.add_argument("model", metavar="MODEL")
    tp.add_argument("--image-size", type=int, default=None,
                    help="input side in pixels (default: 224 for torchvision/timm names, 32 for zoo models)")
    tp.add_argument("--num-classes", type=int, default=100)
    tp.add_argument("--taps", default=None, metavar="A,B,...", help="named taps to check instead of the automatic "
                                                                     "choice (module paths, comma-separated)")
    tp.add_argument("kwargs", nargs="*", metavar="key=value",
                    help="model constructor arguments (values as JSON), e.g. img_size=64 for a timm ViT, "
                         "encoder_name='\"resnet34\"' for segmentation-models-pytorch")
    tp.set_defaults(func=cmd_taps)

    me = sub.add_parser("methods", help="list the training methods")
    me.set_defaults(func=cmd_methods)

    r = sub.add_parser("recipes", help="list the shipped YAML recipes")
    r.set_defaults(func=cmd_recipes)
    return p


def _child_parser() -> argparse.ArgumentParser:
    """The hidden ``tfdistill _child`` (a sweep's training subprocess), parsed apart from the commands a user
    sees, so that it is not listed among them."""
    ch = argparse.ArgumentParser(prog="tfdistill _child")
    ch.add_argument("configs", nargs="+", metavar="CONFIG.yaml")
    ch.add_argument("--modes", required=True, help="one of new, resume, overwrite per config, comma-separated")
    ch.set_defaults(func=cmd_child, command="_child", debug=False)
    return ch


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines reach logs and pipes as they happen
    argv = sys.argv[1:] if argv is None else list(argv)
    child = argv[:1] == ["_child"]
    parser = _child_parser() if child else build_parser()
    ns, extras = parser.parse_known_args(argv[1:] if child else argv)
    # key=value overrides may also follow the options (`sweep SPEC --jobs 2 epochs=30`), which argparse alone
    # refuses once an option has ended the positional list
    late = [a for a in extras if "=" in a and not a.startswith("-")]
    dest = next((d for d in ("overrides", "args", "kwargs") if isinstance(getattr(ns, d, None), list)), None)
    if late and dest:
        getattr(ns, dest).extend(late)
        extras = [a for a in extras if a not in late]
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if not getattr(ns, "command", None):
        parser.print_help()
        return 2
    from .interrupts import graceful_stop

    try:
        with graceful_stop(), _warnings_once():  # SIGINT/SIGTERM: graceful stops, told apart by the exit code
            return int(ns.func(ns) or 0)
    except KeyboardInterrupt as exc:  # (and SIGTERM: errors.Terminated)
        print(f"tfdistill: {exc.args[0] if exc.args else f'stopped by {signal_name(exc)}'}", file=sys.stderr)
        return exit_code(exc)
    except BrokenPipeError:  # `tfdistill ... | head`: the reader has gone; say nothing more
        _silence_stdout()
        return EXIT_PIPE
    except (TfdError, OSError) as exc:
        if ns.debug:
            raise
        print(f"tfdistill: error: {_one_line(exc)}", file=sys.stderr)
        return exit_code(exc)


@contextlib.contextmanager
def _warnings_once():
    """Python warnings in the CLI's form, each text once (``tfdistill: warning: ...`` on stderr); the engine writes
    them to the train.log of the runs concerned and does not echo them again."""
    shown: set[str] = set()
    old = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).strip()
        if text in shown:
            return
        shown.add(text)
        print(f"tfdistill: warning: {text}", file=sys.stderr)
        records = sys.modules.get("tfdistill.engine.records")
        if records is not None:
            records.record_warning(text)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = old


def _one_line(exc: BaseException) -> str:
    """A user error's message; an OSError as the run's stop line (if it stopped a run) or what, where and why."""
    line = getattr(exc, "tfd_stop_line", None)
    if line:
        return line
    if isinstance(exc, OSError) and not isinstance(exc, TfdError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or type(exc).__name__}{where} (errno {exc.errno})" if exc.errno else str(exc)
    return str(exc)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
