"""Command line: argument parsing and error presentation only; every command calls into the library.

    tfdistill train CONFIG.yaml [key=value ...] [--resume | --overwrite]
    tfdistill eval CHECKPOINT [--data NAME] [key=value ...]
    tfdistill demo
    tfdistill models | methods
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from .errors import TfdError


def _split_config_and_overrides(args: list[str]) -> tuple[str | None, list[str]]:
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, list(args)


# ------------------------------------------------------------------------------------------- commands
def cmd_train(ns: argparse.Namespace) -> int:
    from .config import load_config
    from .engine import train

    path, overrides = _split_config_and_overrides(ns.args)
    cfg = load_config(path, overrides)
    result = train(cfg, resume=ns.resume, overwrite=ns.overwrite)
    s = result.summary
    print(f"best top-1 {s['best_top1']:.2f}% (epoch {s['best_epoch']}), last top-1 {s['last_top1']:.2f}%, "
          f"run directory {result.run_dir}")
    return 0


def cmd_eval(ns: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint

    overrides = list(ns.overrides)
    if ns.data:
        overrides.append(f"data.name={ns.data}")
    res = evaluate_checkpoint(ns.checkpoint, overrides, device=ns.device)
    if ns.json:
        print(json.dumps(res))
    else:
        print(f"{res['model']} on {res['dataset']} ({res['count']} images): top-1 {res['top1']:.2f}%  "
              f"top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}")
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out_dir=ns.out_dir, epochs=ns.epochs, model=ns.model)
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
    return 0


def cmd_recipes(ns: argparse.Namespace) -> int:
    from .recipes import list_recipes, recipes_dir

    print(f"# recipes in {recipes_dir()} (use a name or a path with `tfdistill train`)")
    for name in list_recipes():
        print(name)
    return 0


def cmd_methods(ns: argparse.Namespace) -> int:
    from .methods import list_methods, method_uses, resolve_preset

    for name in list_methods():
        p = resolve_preset(name)
        uses = method_uses(name)
        teacher = "teacher" if uses.teacher else "no teacher"
        print(f"{name:<10} {teacher:<10} {p.summary}")
    print("Combine with '+', e.g. tfd+kd; any method takes method.label_smoothing=0.1.")
    return 0


# ------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tfdistill",
        description="Teacher-free Feature Distillation: train, evaluate and compare distillation methods.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train one run from a YAML recipe + key=value overrides",
                       description="Train one run. Example: tfdistill train configs/cifar100/resnet32_tfd.yaml seed=1")
    t.add_argument("args", nargs="*", metavar="CONFIG.yaml|key=value",
                   help="a YAML recipe (optional) followed by dotted overrides, e.g. optim.lr=0.1 method.name=tfd")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run directory from its last.pt")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on its dataset's test split")
    e.add_argument("checkpoint", help="a best.pt / last.pt written by tfdistill train")
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

    m = sub.add_parser("models", help="list the model zoo")
    m.add_argument("--params", action="store_true", help="also print parameter counts")
    m.add_argument("--num-classes", type=int, default=100)
    m.add_argument("--torchvision", action="store_true", help="also list torchvision classification models")
    m.set_defaults(func=cmd_models)

    me = sub.add_parser("methods", help="list the training methods")
    me.set_defaults(func=cmd_methods)

    r = sub.add_parser("recipes", help="list the shipped YAML recipes")
    r.set_defaults(func=cmd_recipes)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not getattr(ns, "command", None):
        parser.print_help()
        return 2
    try:
        return int(ns.func(ns) or 0)
    except TfdError as exc:
        if ns.debug:
            raise
        print(f"tfdistill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tfdistill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
