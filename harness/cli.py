"""Command line: ``harness list``, ``harness saliency`` (the seed's figure), and the experiment
commands as they land."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from shlex import quote

import yaml

import harness
from harness.data import crop_pixels, load_dataset, preprocess, resolve_targets
from harness.distributed import DistributedError
from harness.io import FolderLocked, atomic_write
from harness.methods import list_methods, saliency_batched
from harness.models import WeightsUnavailableError, load_model
from harness.registry import UnknownNameError
from harness.tracking import TrackingUnavailableError


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
    """``--param smoothgrad.n=20`` -> ``{"smoothgrad": {"n": 20}}`` for the methods listed (a
    plug-in's import path may hold dots: ``--param mypkg.saliency:edges.power=2``)."""
    params: dict[str, dict] = {name: {} for name in methods}
    for key, value in parse_assignments(items, "--param").items():
        name = next((m for m in sorted(methods, key=len, reverse=True)
                     if key.startswith(f"{m}.")), "")
        field = key[len(name) + 1:] if name else ""
        if name not in params or not field:
            raise ValueError(f"--param {key!r} must be METHOD.KEY=VALUE with METHOD one of "
                             f"{', '.join(methods)}")
        params[name][field] = value
    return params


def check_methods(methods: Sequence[str], params: dict[str, dict]) -> None:
    """The config's method checks for ``--methods``/``--param`` (errors name ``--param M.KEY``)."""
    from harness.config import ConfigError, _validate_methods

    for index, name in enumerate(methods):
        try:
            _validate_methods([{"name": name, "params": params[name]}])
        except ConfigError as error:
            text = str(error).replace("methods[0].params.", f"--param {name}.")
            raise ConfigError(text.replace("methods[0].name", f"--methods[{index}]")) from None


def check_data_options(args: argparse.Namespace) -> dict:
    """``--data-opt`` and ``--device`` with the config's checks."""
    from harness.config import check_device, check_signature_options
    from harness.data import DATASETS
    from harness.registry import lookup

    options = parse_assignments(args.data_opt, "--data-opt")
    check_signature_options(lookup(DATASETS, "dataset", args.data), options, "--data-opt",
                            f"dataset {args.data!r}")
    check_device(args.device, "--device")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    return options


def cmd_list(args: argparse.Namespace) -> int:
    from harness.metrics import get_metric, list_metrics

    listings = {"models": harness.list_models, "methods": list_methods,
                "datasets": harness.list_datasets, "metrics": list_metrics}
    for kind in [args.kind] if args.kind else listings:
        print(f"{kind}:")
        if kind == "methods":
            for name in list_methods():
                method = harness.get_method(name)
                print(f"  {name:22s} {method.summary}  [{method.citation}]")
            print_dynamic_methods()
        elif kind == "metrics":
            for name in list_metrics():
                metric = get_metric(name)
                arrow = (f"{'higher' if metric.direction == 'up' else 'lower'} is better"
                         if not metric.column_directions else
                         ", ".join(f"{c}: {'higher' if d == 'up' else 'lower'} is better"
                                   for c, d in metric.column_directions))
                defaults = ", ".join(f"{k}={v}" for k, v in metric.defaults().items())
                print(f"  {name:22s} {metric.summary} ({arrow}; {metric.criterion}; needs "
                      f"{', '.join(sorted(metric.needs))})  [{metric.citation}]\n"
                      f"  {'':22s} defaults: {defaults}")
        else:
            print("  " + ", ".join(listings[kind]()))
    return 0


def print_dynamic_methods() -> None:
    """The adapter families (with their classes, or the extra to install) and the plug-ins."""
    import textwrap

    from harness.methods import FAMILIES, MissingDependencyError
    from harness.methods.plugins import ENTRY_POINT_GROUP, SIGNATURE, list_plugins

    print("adapters (optional libraries; a method is <prefix>:<Class>):")
    for prefix, family in FAMILIES.items():
        try:
            members = family.members()
        except MissingDependencyError:
            print(f"  {prefix + ':<Class>':22s} {family.library} is not installed: "
                  f"pip install -e '.[{family.extra}]'")
            continue
        lines = textwrap.wrap(", ".join(members), width=72)
        print(f"  {prefix + ':<Class>':22s} {family.summary} ({len(members)}):")
        for line in lines:
            print(f"  {'':22s}   {line}")
    print(f"plug-ins (entry points of group {ENTRY_POINT_GROUP!r}):")
    for name in list_plugins():
        print(f"  {name:22s} {harness.get_method(name).summary}")
    if not list_plugins():
        print("  (none installed)")
    print(f"  any package.module:function with the signature {SIGNATURE}")


def cmd_saliency(args: argparse.Namespace) -> int:
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    params = method_params(methods, args.param)
    check_methods(methods, params)
    options = check_data_options(args)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    model = load_model(args.model, weights=args.weights, checkpoint=args.checkpoint,
                       device=args.device)
    info = model.harness_info
    dataset = load_dataset(args.data, limit=args.limit, seed=args.seed, **options)
    images = [sample.load() for sample in dataset]
    x = preprocess(images, info, device=args.device, ids=dataset.ids)
    target = resolve_targets(model, x, [s.label for s in dataset], dataset.ids,
                             mode=args.target_mode)
    maps = {}
    for name in methods:
        maps[name] = saliency_batched(name, model, x, target, batch_size=args.batch_size,
                                      method_params=params[name])
    if args.save_maps:
        from harness.data import save_maps

        for name, values in maps.items():
            target_path = args.save_maps.replace("{method}", name)
            if "{method}" not in args.save_maps and len(maps) > 1:
                raise ValueError("--save-maps needs '{method}' in the path for several methods")
            save_maps(target_path, values, dataset.ids, targets=target.cpu().numpy())
            print(f"wrote {target_path}")
    class_names = dataset.class_names or info.categories
    titles = [class_names[int(t)] if int(t) < len(class_names) else str(int(t)) for t in target]
    from harness.figures import saliency_grid

    saliency_grid(crop_pixels(images, info), titles, maps, args.out)
    print(f"wrote {args.out}: {len(dataset)} images x {len(methods)} methods "
          f"({args.model}, weights {info.weights})")
    return 0


def score_settings(chosen: Sequence[str], args: argparse.Namespace) -> dict:
    """Each metric's registry settings: its defaults, then the flags it has a field for
    (``--step``, ``--score``, ``--batch-size``; ``--deletion-substrate`` for the removal metrics,
    ``--insertion-substrate`` for insertion), then ``--option METRIC.KEY=VALUE``; validated as
    a config's ``metrics:`` section is (errors name ``metrics.<metric>.<key>``)."""
    import dataclasses

    from harness.config import _validate_metrics
    from harness.metrics import get_metric

    options = {name: {} for name in chosen}
    for key, value in parse_assignments(args.option, "--option").items():
        name, _, field = key.partition(".")
        if name not in options or not field:
            raise ValueError(f"--option {key!r} must be METRIC.KEY=VALUE with METRIC one of "
                             f"{', '.join(chosen)}")
        options[name][field] = value
    raw = {}
    for name in chosen:
        fields = {f.name for f in dataclasses.fields(get_metric(name).settings)}
        flags = {"step": args.step, "score": args.score, "batch_size": args.batch_size,
                 "substrate": (args.insertion_substrate if name == "insertion"
                               else args.deletion_substrate)}
        raw[name] = {**{k: v for k, v in flags.items() if k in fields and v is not None},
                     **options[name]}
    return _validate_metrics(raw)


def cmd_score(args: argparse.Namespace) -> int:
    """Score saliency maps made by any tool with every registered metric that needs only maps."""
    import numpy as np
    import torch

    from harness.data import load_maps
    from harness.metrics import Unit, get_metric, list_metrics
    from harness.report import metric_curves, per_image_table

    chosen = [name.strip() for name in args.metrics.split(",") if name.strip()]
    for name in chosen:
        needs = get_metric(name).needs
        if not needs <= {"maps"}:
            usable = [m for m in list_metrics() if get_metric(m).needs <= {"maps"}]
            raise ValueError(f"metric {name!r} needs {', '.join(sorted(needs - {'maps'}))}, not "
                             f"only maps: run it with `harness run`; scorable from maps: "
                             f"{', '.join(usable)}")
    settings = score_settings(chosen, args)
    options = check_data_options(args)
    maps, map_ids = load_maps(args.maps)
    model = load_model(args.model, weights=args.weights, checkpoint=args.checkpoint,
                       device=args.device)
    dataset = load_dataset(args.data, limit=args.limit, seed=args.seed, **options)
    if map_ids is None:
        if len(maps) != len(dataset):
            raise ValueError(f"{args.maps} has {len(maps)} maps without ids for {len(dataset)} "
                             "images; store ids or match the dataset")
        samples = list(dataset)
    else:
        by_id = {sample.id: sample for sample in dataset}
        missing = [i for i in map_ids if i not in by_id]
        if missing:
            raise ValueError(f"maps for images not in the dataset: {missing[:5]}")
        samples = [by_id[i] for i in map_ids]
    ids = [sample.id for sample in samples]
    x = preprocess([sample.load() for sample in samples], model.harness_info, device=args.device,
                   ids=ids)
    labels = tuple(s.label for s in samples)
    target = resolve_targets(model, x, list(labels), ids, mode=args.target_mode)
    unit = Unit(model, x, target, tuple(ids), method="(maps file)", labels=labels,
                batch_size=args.batch_size or 8)
    unit.__dict__["maps"] = torch.from_numpy(maps).to(args.device)  # the given maps, not a method
    unit.__dict__["signed_maps"] = None
    records = []
    for name in chosen:
        for record in get_metric(name).fn(unit, settings[name]):
            index = ids.index(record["image_id"])
            records.append({"method": "maps", "metric": name, "target": int(target[index]),
                            **record})
    table = per_image_table(records)
    for column, rows in table.groupby("metric", sort=False):
        print(f"{column:18s} mean {rows['value'].mean():.4f} over {rows['value'].notna().sum()} "
              f"images ({'higher' if rows['direction'].iloc[0] == 'up' else 'lower'} is better)")
    atomic_write(args.out, table.drop(columns="method").to_csv(index=False))
    curves = {name: by_method["maps"][1] for name, by_method in metric_curves(records).items()}
    np.savez_compressed(str(args.out).rsplit(".", 1)[0] + "_curves.npz", ids=np.array(ids),
                        **curves)
    print(f"wrote {args.out} ({args.target_mode} targets; "
          + "; ".join(f"{n}: {settings[n]}" for n in chosen) + ")")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from harness.config import load_config
    from harness.pipeline import run_experiment, table_meta
    from harness.report import render_tables

    config = load_config(args.config, args.set)
    source = f"harness run {args.config}"
    result = run_experiment(config, resume=args.resume, progress=not args.no_progress,
                            source=source)
    summary = result["summary"]
    if summary is None:  # a rank other than 0 of a distributed run: rank 0 reports
        print(f"rank {result['rank']}: {result['computed']} records computed in "
              f"{result['output_dir']}")
        return 0
    print()
    source = f"MLflow run {result['run_id']}" if result["run_id"] else str(result["output_dir"])
    print(render_tables(summary, {**table_meta(config, result["weights"], source),
                                  "similarity": result.get("similarity")})["md"])
    output = result["output_dir"]
    print(f"results: {output}/results.csv, tables: {output}/tables/, figures: {output}/figures/")
    if result["run_id"]:
        from harness.tracking import resolve_tracking

        uri, experiment, _ = resolve_tracking(config.tracking.uri, config.tracking.experiment)
        print(f"MLflow: parent run {result['run_id']} in experiment '{experiment}' ({uri}).")
        for line in run_hints(result["run_id"], uri, Path(sys.executable).parent):
            print(line)
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    from harness.pipeline import log_folder

    log_folder(args.run_dir)
    return 0


def run_hints(run_id: str, uri: str, tools: Path) -> list[str]:
    """The commands that open the run in the MLflow UI and make its table, shell-quoted (paths
    with spaces or quotes paste as they are)."""
    mlflow_cli = tools / "mlflow" if (tools / "mlflow").exists() else "mlflow"
    harness_cli = tools / "harness" if (tools / "harness").exists() else "harness"
    lines = []
    if uri.startswith("sqlite:"):
        lines.append(f"  open the UI:  {quote(str(mlflow_cli))} ui --backend-store-uri "
                     f"{quote(uri)}   (then http://127.0.0.1:5000, select the method runs, "
                     "Compare)")
    lines.append(f"  paper table:  {quote(str(harness_cli))} table {quote(run_id)} "
                 f"--tracking-uri {quote(uri)}")
    return lines


def cmd_table(args: argparse.Namespace) -> int:
    from harness.pipeline import table_for

    summary, paths = table_for(args.run, tracking_uri=args.tracking_uri,
                               reference=args.reference, out=args.out, ci_method=args.ci)
    print(paths[1].read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_reliability(args: argparse.Namespace) -> int:
    """Reliability statistics of a run folder's metric columns (read-only unless --out)."""
    from harness.reliability import reliability_for

    if args.resamples < 1:
        raise ValueError(f"--resamples must be >= 1, got {args.resamples}")
    variants = [[c.strip() for c in group.split(",") if c.strip()] for group in args.variants]
    _, markdown = reliability_for(args.run_dir, out=args.out, variants=variants, seed=args.seed,
                                  n_resamples=args.resamples)
    print(markdown)
    if args.out:
        print(f"wrote {args.out}/tables/reliability.md (+ CSVs), {args.out}/figures/agreement.png")
    return 0


def cmd_meta(args: argparse.Namespace) -> int:
    """Meta-evaluate a config's metrics (MetaQuantus' model and input perturbation tests)."""
    from harness.meta import load_meta, run_meta

    config, settings = load_meta(args.config, args.set)
    result = run_meta(config, settings, progress=not args.no_progress,
                      source=f"harness meta {args.config}")
    print((Path(result["output_dir"]) / "tables" / "meta.md").read_text())
    print(f"outputs: {result['output_dir']} (tables/meta.md, figures/meta_area.png, "
          "scores.parquet)" + (f"; MLflow run {result['run_id']}" if result["run_id"] else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__)
    parser.add_argument("--version", action="version", version=harness.__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    listing = sub.add_parser("list", help="list models, methods, datasets and metrics")
    listing.add_argument("kind", nargs="?", choices=["models", "methods", "datasets", "metrics"])
    listing.set_defaults(func=cmd_list)

    figure = sub.add_parser("saliency", help="the seed's figure: images over one row per method")
    _model_args(figure)
    _data_args(figure)
    figure.add_argument("--methods", default="vanilla", help="comma-separated method names")
    figure.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="a method parameter, e.g. smoothgrad.n=20 (repeatable)")
    figure.add_argument("--batch-size", type=int, default=16)
    figure.add_argument("--out", default="saliency.png", help="output image file")
    figure.add_argument("--save-maps", default=None, metavar="PATH",
                        help="also save the maps as .npz (use {method} in PATH for several)")
    figure.set_defaults(func=cmd_saliency)

    score = sub.add_parser("score", help="deletion/insertion/MoRF/LeRF/ABPC of maps saved on disk")
    _model_args(score)
    _data_args(score)
    score.add_argument("--maps", required=True,
                       help=".npz (maps, ids), .npy or .pt file of [N, H, W] maps")
    score.add_argument("--metrics", default="deletion,insertion",
                       help="comma-separated registered metrics that need only maps "
                            "(`harness list metrics`)")
    score.add_argument("--step", type=int, default=None, help="curve metrics' step (224)")
    score.add_argument("--score", default=None, help="prob or logit where a metric has it")
    score.add_argument("--deletion-substrate", default=None, help="removal metrics (zero)")
    score.add_argument("--insertion-substrate", default=None, help="insertion (rise_blur)")
    score.add_argument("--batch-size", type=int, default=None)
    score.add_argument("--option", action="append", default=[], metavar="METRIC.KEY=VALUE",
                       help="any setting of a metric, e.g. road.imputer=mean (repeatable)")
    score.add_argument("--out", default="scores.csv", help="per-image CSV (curves beside, .npz)")
    score.set_defaults(func=cmd_score)

    runner = sub.add_parser("run", help="run an experiment config (records, tables, MLflow)")
    runner.add_argument("config", help="experiments/*.yaml")
    runner.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="override a config key, e.g. data.limit=2 or methods.1.params.n=10")
    runner.add_argument("--resume", action="store_true",
                        help="continue the run in the config's output_dir without recomputing")
    runner.add_argument("--no-progress", action="store_true")
    runner.set_defaults(func=cmd_run)

    logger = sub.add_parser("log", help="upload a finished run folder to MLflow (what a lost "
                                        "tracking server missed); nothing is duplicated")
    logger.add_argument("run_dir", help="an output folder of `harness run`")
    logger.set_defaults(func=cmd_log)

    table = sub.add_parser("table", help="LaTeX/Markdown/CSV table of a run")
    table.add_argument("run", help="an output folder of `harness run` or an MLflow run id")
    table.add_argument("--tracking-uri", default=None,
                       help="MLflow store of a run id (default: MLFLOW_TRACKING_URI, else "
                            "sqlite:///mlflow.db)")
    table.add_argument("--reference", default=None, help="method for the paired tests")
    table.add_argument("--out", default=None, help="folder for table.tex/.md/.csv")
    table.add_argument("--ci", default=None, choices=("bca", "percentile"),
                       help="bootstrap CI method (default: the run's config, bca)")
    table.set_defaults(func=cmd_table)

    trust = sub.add_parser("reliability", help="can these metrics be trusted here? Krippendorff's "
                                               "alpha, agreement, LATEC ranking of a run folder")
    trust.add_argument("run_dir", help="an output folder of `harness run` (any version)")
    trust.add_argument("--out", default=None, help="write tables/ and figures/ under this folder "
                                                   "(default: print only, write nothing)")
    trust.add_argument("--variants", action="append", default=[], metavar="COL,COL[,...]",
                       help="columns that are variants of one metric, e.g. deletion,morf "
                            "(repeatable)")
    trust.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (1000)")
    trust.add_argument("--seed", type=int, default=None, help="bootstrap seed (the run's)")
    trust.set_defaults(func=cmd_reliability)

    meta = sub.add_parser("meta", help="meta-evaluate a config's metrics under model and input "
                                       "perturbations (MetaQuantus: IAC, IEC, MC)")
    meta.add_argument("config", help="experiments/*.yaml; its meta: section sets K, iterations")
    meta.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                      help="override a config key, e.g. meta.iterations=2 or data.limit=4")
    meta.add_argument("--no-progress", action="store_true")
    meta.set_defaults(func=cmd_meta)
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
    except (UnknownNameError, ValueError, WeightsUnavailableError, TrackingUnavailableError,
            FolderLocked, DistributedError) as error:
        print(f"harness: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
