"""The command line, a thin shell over the Python API (``harness.api``).

``harness list``, ``harness saliency`` (the seed's figure), ``harness score`` (maps made
elsewhere), ``harness run`` (an experiment config), ``harness log`` (a run folder to MLflow),
``harness table`` (a run's paper tables), ``harness reliability`` (can a run's metrics be trusted)
and ``harness meta`` (the metrics' meta-evaluation). An error the harness raises on purpose
(``HarnessError``) prints as ``harness: error: ...`` and exits 2; anything else is a bug and
shows its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from shlex import quote

import numpy as np
import yaml

from harness.api import (
    check_score_metrics,
    load_config,
    log_run,
    run,
    score_curves,
    score_maps,
    score_summary,
    table,
)
from harness.config import check_device, check_signature_options, validate_method
from harness.datasets import get_dataset, load_dataset
from harness.errors import ConfigError, HarnessError
from harness.figures import saliency_grid
from harness.files import atomic_save, atomic_write
from harness.images import crop_pixels, preprocess
from harness.listing import compact_table, list_text, settings_text, small_n_warning, terminal_width
from harness.mapsfile import save_maps
from harness.meta.report import load_meta, run_meta
from harness.methods import saliency_batched
from harness.metrics.registry import get_metric, per_image_table
from harness.models import load_model
from harness.reference import method_reference_markdown, metric_reference_markdown
from harness.registry import import_plugins, plugin_folders
from harness.reliability import reliability_for
from harness.settings import check_int, check_seed
from harness.targets import resolve_targets
from harness.tracking import masked, resolve_tracking
from harness.version import __version__


def parse_assignments(items: Sequence[str], what: str) -> dict[str, object]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}`` (values parsed as YAML scalars)."""
    parsed: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r} must look like key=value")
        try:
            parsed[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ConfigError(f"{what} {item!r}: the value is not valid YAML "
                              f"({str(error).splitlines()[0]})") from None
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
            raise ConfigError(f"--param {key!r} must be METHOD.KEY=VALUE with METHOD one of "
                              f"{', '.join(methods)}")
        params[name][field] = value
    return params


def check_methods(methods: Sequence[str], params: dict[str, dict]) -> None:
    """The config's method checks for ``--methods``/``--param`` (errors name ``--param M.KEY``)."""
    for name in methods:
        validate_method(name, params[name], f"--param {name}")


def check_data_options(args: argparse.Namespace) -> dict:
    """``--data-opt`` and ``--device`` with the config's checks."""
    options = parse_assignments(args.data_opt, "--data-opt")
    check_signature_options(get_dataset(args.data), options, "--data-opt",
                            f"dataset {args.data!r}")
    check_device(args.device, "--device")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    return options


# ----------------------------------------------------------------------------- list


def cmd_list(args: argparse.Namespace) -> int:
    if args.format == "md":
        markdown = {"metrics": metric_reference_markdown, "methods": method_reference_markdown}
        if args.kind not in markdown:
            raise ConfigError("--format md: only for `harness list metrics` or `harness list "
                              "methods`")
        print(markdown[args.kind]())
        return 0
    kinds = [args.kind] if args.kind else ["models", "datasets", "methods", "metrics"]
    print(list_text(kinds))
    return 0


# ----------------------------------------------------------------------------- saliency


def cmd_saliency(args: argparse.Namespace) -> int:
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    params = method_params(methods, args.param)
    check_methods(methods, params)
    options = check_data_options(args)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    model = load_model(args.model, weights=args.weights, checkpoint=args.checkpoint,
                       device=args.device)
    info = model.harness_info
    dataset = load_dataset(args.data, limit=args.limit, seed=args.seed, **options)
    images = [sample.load() for sample in dataset]
    x = preprocess(images, info, device=args.device, ids=dataset.ids)
    target = resolve_targets(model, x, [s.label for s in dataset], dataset.ids,
                             mode=args.target_mode)
    if args.save_maps and "{method}" not in args.save_maps and len(methods) > 1:
        raise ConfigError("--save-maps needs '{method}' in the path for several methods")
    maps = {}
    for name in methods:
        maps[name] = saliency_batched(name, model, x, target, batch_size=args.batch_size,
                                      method_params=params[name])
    if args.save_maps:
        for name, values in maps.items():
            target_path = args.save_maps.replace("{method}", name.replace(":", "_"))
            save_maps(target_path, values, dataset.ids, targets=target.cpu().numpy())
            print(f"wrote {target_path}")
    class_names = dataset.class_names or info.categories
    titles = [class_names[int(t)] if int(t) < len(class_names) else str(int(t)) for t in target]
    saliency_grid(crop_pixels(images, info), titles, maps, args.out)
    print(f"wrote {args.out}: {len(dataset)} images x {len(methods)} methods "
          f"({args.model}, weights {info.weights})")
    return 0


# ----------------------------------------------------------------------------- score


def score_settings(chosen: Sequence[str], args: argparse.Namespace) -> dict[str, dict]:
    """Each metric's settings mapping: the flags it has a field for (``--step``, ``--score``,
    ``--batch-size``; ``--deletion-substrate`` for the removal metrics, ``--insertion-substrate``
    for insertion), then ``--option METRIC.KEY=VALUE``; validated by ``harness.score_maps`` as a
    config's ``metrics:`` section is (errors name ``metrics.<metric>.<key>``)."""
    options: dict[str, dict] = {name: {} for name in chosen}
    for key, value in parse_assignments(args.option, "--option").items():
        name, _, field = key.partition(".")
        if name not in options or not field:
            raise ConfigError(f"--option {key!r} must be METRIC.KEY=VALUE with METRIC one of "
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
    return raw


def cmd_score(args: argparse.Namespace) -> int:
    """Score saliency maps made by any tool with every registered metric that needs only maps."""
    chosen = [name.strip() for name in args.metrics.split(",") if name.strip()]
    settings = score_settings(chosen, args)
    check_score_metrics(settings)  # bad settings are named before the model loads
    options = check_data_options(args)
    model = load_model(args.model, weights=args.weights, checkpoint=args.checkpoint,
                       device=args.device)
    dataset = load_dataset(args.data, limit=args.limit, seed=args.seed, **options)
    frame = score_maps(args.maps, model, dataset, settings, target=args.target_mode,
                       batch_size=args.batch_size or 8, device=args.device)
    for row in score_summary(frame).to_dict("records"):
        print(f"{row['metric']:18s} mean {row['mean']:.4f} over {row['n']} images "
              f"({'higher' if row['direction'] == 'up' else 'lower'} is better)")
    out = Path(args.out)
    cells = per_image_table(frame.assign(method="maps")).drop(columns="method")
    atomic_write(out, cells.to_csv(index=False))
    curves_path = out.with_name(f"{out.stem}_curves.npz")
    curves = score_curves(frame)
    atomic_save(curves_path, lambda temporary: np.savez_compressed(
        temporary, ids=np.array(list(dict.fromkeys(frame["image_id"]))), **curves))
    print(f"wrote {out} and {curves_path} ({args.target_mode} targets); settings:")
    for name, values in settings.items():
        print("\n".join(textwrap.wrap(
            f"{name}: {settings_text({**get_metric(name).defaults(), **values})}",
            width=terminal_width(), initial_indent="  ", subsequent_indent="      ")))
    return 0


# ----------------------------------------------------------------------------- run, log, table


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set, smoke_run=args.smoke)
    result = run(config, resume=args.resume, overwrite=args.overwrite, force=args.force,
                 progress=not args.no_progress, source=f"harness run {args.config}")
    if result.table is None:  # a rank other than 0 of a distributed run: rank 0 reports
        print(f"rank {result.rank}: {result.computed} records computed in {result.output_dir}")
        return 0
    print()
    print(compact_table(result.table))
    output = result.output_dir
    n = int(result.table["n"].max()) if len(result.table) else 0
    notes = [f"means over n = {n} images, * best per column; the table with 95% intervals, "
             f"tests and its caption: {output}/tables/table.md (.tex, .csv)",
             small_n_warning(result.table),
             f"results: {output}/results.csv, figures: {output}/figures/"]
    print()
    for note in filter(None, notes):
        print("\n".join(textwrap.wrap(note, width=terminal_width(), subsequent_indent="  ",
                                       break_on_hyphens=False, break_long_words=False)))
    if result.run_id:
        uri, experiment, _ = resolve_tracking(config.tracking.uri, config.tracking.experiment)
        print(f"MLflow: parent run {result.run_id} in experiment '{experiment}' "
              f"({masked(uri)}).")
        for line in run_hints(result.run_id, uri, Path(sys.executable).parent):
            print(line)
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    log_run(args.run_dir)
    return 0


def run_hints(run_id: str, uri: str, tools: Path) -> list[str]:
    """The commands that open the run in the MLflow UI and make its table, shell-quoted (paths
    with spaces or quotes paste as they are)."""
    mlflow_cli = tools / "mlflow" if (tools / "mlflow").exists() else "mlflow"
    harness_cli = tools / "harness" if (tools / "harness").exists() else "harness"
    lines = []
    if uri.startswith("sqlite:"):
        lines.append("  open the UI (then http://127.0.0.1:5000, select the method runs, Compare):")
        lines.append(f"    {quote(str(mlflow_cli))} ui --backend-store-uri {quote(uri)}")
    lines.append("  the paper's table:")
    lines.append(f"    {quote(str(harness_cli))} table {quote(run_id)} "
                 f"--tracking-uri {quote(masked(uri))}")
    return lines


def cmd_table(args: argparse.Namespace) -> int:
    _, paths = table(args.run, tracking_uri=args.tracking_uri, reference=args.reference,
                     out=args.out, ci_method=args.ci)
    print(paths[1].read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_reliability(args: argparse.Namespace) -> int:
    """Reliability statistics of a run folder's metric columns (read-only unless --out)."""
    check_int("--resamples", args.resamples, 1)
    if args.seed is not None:
        check_seed("--seed", args.seed)
    variants = [[c.strip() for c in group.split(",") if c.strip()] for group in args.variants]
    _, markdown = reliability_for(args.run_dir, out=args.out, variants=variants, seed=args.seed,
                                  n_resamples=args.resamples)
    print(markdown)
    if args.out:
        print(f"wrote {args.out}/tables/reliability.md (+ CSVs), {args.out}/figures/agreement.png")
    return 0


def cmd_meta(args: argparse.Namespace) -> int:
    """Meta-evaluate a config's metrics (MetaQuantus' model and input perturbation tests)."""
    config, settings = load_meta(args.config, args.set)
    result = run_meta(config, settings, progress=not args.no_progress,
                      source=f"harness meta {args.config}")
    print((Path(result["output_dir"]) / "tables" / "meta.md").read_text())
    print(f"outputs: {result['output_dir']} (tables/meta.md, figures/meta_area.png, "
          "scores.parquet)" + (f"; MLflow run {result['run_id']}" if result["run_id"] else ""))
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="import a module (a name, or a .py file) that registers methods, "
                             "metrics, datasets or models (repeatable)")
    parser = argparse.ArgumentParser(prog="harness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    listing = sub.add_parser("list", parents=[common],
                             help="list models, methods, datasets and metrics")
    listing.add_argument("kind", nargs="?", choices=["models", "methods", "datasets", "metrics"])
    listing.add_argument("--format", choices=["text", "md"], default="text",
                         help="md: the metric or method reference as Markdown (the docs' pages)")
    listing.set_defaults(func=cmd_list)

    figure = sub.add_parser("saliency", parents=[common],
                            help="the seed's figure: images over one row per method")
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

    score = sub.add_parser("score", parents=[common],
                           help="score maps saved on disk with the metrics that need only maps")
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

    runner = sub.add_parser("run", parents=[common],
                            help="run an experiment config (records, tables, MLflow)")
    runner.add_argument("config", help="experiments/*.yaml")
    runner.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="override a config key, e.g. data.limit=2, "
                             "methods.smoothgrad.params.n=10 or methods.1.params.n=10")
    runner.add_argument("--resume", action="store_true",
                        help="continue the run in the config's output_dir without recomputing")
    runner.add_argument("--overwrite", action="store_true",
                        help="start afresh in an output_dir that holds an earlier run (its "
                             "records, maps, tables and figures are replaced)")
    runner.add_argument("--force", action="store_true",
                        help="with --resume: continue under another CPU thread count or device "
                             "type (the records then mix values whose last digits differ)")
    runner.add_argument("--smoke", action="store_true",
                        help="a one-minute try: 2 images, coarse steps, few samples, into "
                             "<output_dir>-smoke")
    runner.add_argument("--no-progress", action="store_true")
    runner.set_defaults(func=cmd_run)

    logger = sub.add_parser("log", parents=[common],
                            help="upload a finished run folder to MLflow (what a lost tracking "
                                 "server missed; nothing is duplicated), or end the MLflow runs "
                                 "of a run whose process died as KILLED")
    logger.add_argument("run_dir", help="an output folder of `harness run`")
    logger.set_defaults(func=cmd_log)

    tables = sub.add_parser("table", parents=[common], help="LaTeX/Markdown/CSV table of a run")
    tables.add_argument("run", help="an output folder of `harness run` or an MLflow run id")
    tables.add_argument("--tracking-uri", default=None,
                        help="MLflow store of a run id (default: MLFLOW_TRACKING_URI, else "
                             "sqlite:///mlflow.db)")
    tables.add_argument("--reference", default=None, help="method for the paired tests")
    tables.add_argument("--out", default=None, help="folder for table.tex/.md/.csv")
    tables.add_argument("--ci", default=None, choices=("bca", "percentile"),
                        help="bootstrap CI method (default: the run's config, bca)")
    tables.set_defaults(func=cmd_table)

    trust = sub.add_parser("reliability", parents=[common],
                           help="can these metrics be trusted here? Krippendorff's alpha, "
                                "agreement, LATEC ranking of a run folder")
    trust.add_argument("run_dir", help="an output folder of `harness run` (any version)")
    trust.add_argument("--out", default=None, help="write tables/ and figures/ under this folder "
                                                   "(default: print only, write nothing)")
    trust.add_argument("--variants", action="append", default=[], metavar="COL,COL[,...]",
                       help="columns that are variants of one metric, e.g. deletion,morf "
                            "(repeatable)")
    trust.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (1000)")
    trust.add_argument("--seed", type=int, default=None, help="bootstrap seed (the run's)")
    trust.set_defaults(func=cmd_reliability)

    meta = sub.add_parser("meta", parents=[common],
                          help="meta-evaluate a config's metrics under model and input "
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
    """Run the command line; returns the exit status (2 for a ``HarnessError``). Any other
    exception propagates: it is a bug, and its traceback is what a report needs."""
    args = build_parser().parse_args(argv)
    try:
        import_plugins(args.plugin, plugin_folders())
        return args.func(args)
    except HarnessError as error:
        print(f"harness: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:  # Ctrl-C, or SIGTERM during a run (RunTerminated)
        text = str(error) or "interrupted (Ctrl-C)"
        print(f"harness: {text}; the records stored so far are kept (--resume continues)",
              file=sys.stderr)
        return 143 if "SIGTERM" in text else 130


if __name__ == "__main__":
    sys.exit(main())
