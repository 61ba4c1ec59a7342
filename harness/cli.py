"""Command line: ``harness list``, ``harness saliency`` (the seed's figure), and the experiment
commands as they land."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import yaml

import harness
from harness.data import crop_pixels, load_dataset, preprocess, resolve_targets
from harness.methods import list_methods, saliency_batched
from harness.models import load_model
from harness.registry import UnknownNameError


def parse_assignments(items: Sequence[str], what: str) -> dict[str, object]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}`` (values parsed as YAML scalars)."""
    parsed: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r} must look like key=value")
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


def method_params(methods: Sequence[str], items: Sequence[str]) -> dict[str, dict]:
    """``--param smoothgrad.n=20`` -> ``{"smoothgrad": {"n": 20}}`` for the methods listed."""
    params: dict[str, dict] = {name: {} for name in methods}
    for key, value in parse_assignments(items, "--param").items():
        name, _, field = key.partition(".")
        if name not in params or not field:
            raise ValueError(f"--param {key!r} must be METHOD.KEY=VALUE with METHOD one of "
                             f"{', '.join(methods)}")
        params[name][field] = value
    return params


def cmd_list(args: argparse.Namespace) -> int:
    listings = {"models": harness.list_models, "methods": list_methods,
                "datasets": harness.list_datasets}
    for kind in [args.kind] if args.kind else listings:
        print(f"{kind}:")
        if kind == "methods":
            for name in list_methods():
                method = harness.get_method(name)
                print(f"  {name:22s} {method.summary}  [{method.citation}]")
        else:
            print("  " + ", ".join(listings[kind]()))
    return 0


def cmd_saliency(args: argparse.Namespace) -> int:
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    for name in methods:
        harness.get_method(name)
    params = method_params(methods, args.param)
    model = load_model(args.model, weights=args.weights, checkpoint=args.checkpoint,
                       device=args.device)
    info = model.harness_info
    dataset = load_dataset(args.data, limit=args.limit, seed=args.seed,
                           **parse_assignments(args.data_opt, "--data-opt"))
    images = [sample.load() for sample in dataset]
    x = preprocess(images, info, device=args.device)
    target = resolve_targets(model, x, [s.label for s in dataset], dataset.ids,
                             mode=args.target_mode)
    maps = {}
    for name in methods:
        maps[name] = saliency_batched(name, model, x, target, batch_size=args.batch_size,
                                      **params[name])
    class_names = dataset.class_names or info.categories
    titles = [class_names[int(t)] if int(t) < len(class_names) else str(int(t)) for t in target]
    from harness.figures import saliency_grid

    saliency_grid(crop_pixels(images, info), titles, maps, args.out)
    print(f"wrote {args.out}: {len(dataset)} images x {len(methods)} methods "
          f"({args.model}, weights {info.weights})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__)
    parser.add_argument("--version", action="version", version=harness.__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    listing = sub.add_parser("list", help="list models, methods and datasets")
    listing.add_argument("kind", nargs="?", choices=["models", "methods", "datasets"])
    listing.set_defaults(func=cmd_list)

    figure = sub.add_parser("saliency", help="the seed's figure: images over one row per method")
    _model_args(figure)
    _data_args(figure)
    figure.add_argument("--methods", default="vanilla", help="comma-separated method names")
    figure.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="a method parameter, e.g. smoothgrad.n=20 (repeatable)")
    figure.add_argument("--batch-size", type=int, default=16)
    figure.add_argument("--out", default="saliency.png", help="output image file")
    figure.set_defaults(func=cmd_saliency)
    return parser


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="efficientnet_lite0", help="see `harness list models`")
    parser.add_argument("--weights", default="default", help="default | random | an enum name")
    parser.add_argument("--checkpoint", default=None, help="local state-dict file")
    parser.add_argument("--device", default="cpu")


def _data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="samples", help="see `harness list datasets`")
    parser.add_argument("--data-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="dataset option, e.g. path=imagenet_val_25.npz or root=val/")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None, help="seed of the --limit subset")
    parser.add_argument("--target-mode", choices=["label", "predicted"], default="label",
                        help="explain the label (predicted where there is none) or the top-1")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UnknownNameError, ValueError, harness.models.WeightsUnavailableError) as error:
        print(f"harness: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
