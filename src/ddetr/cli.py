"""The ``ddetr`` command line: a thin layer over the Python API (:mod:`ddetr.api`).

``ddetr <action> -e spec.yaml key=value ...`` parses the arguments, calls the API (which loads and validates
the spec and runs ``ddetr.tasks.<action>``) and logs the result's summary in one line. User errors
(:class:`~ddetr.errors.DdetrError`) print one line, ``error: <message>``, and exit with code 2; an interrupted
run exits with 130 (Ctrl-C) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from ddetr._version import __version__
from ddetr.api import SPEC_ACTIONS
from ddetr.errors import DdetrError, Interrupted, SpecError

logger = logging.getLogger(__name__)

EXIT_USER_ERROR = 2
EXIT_UNEXPECTED = 1  # a bug or an environment problem we did not anticipate (one line, -v for the traceback)
EXIT_INTERRUPTED = 130

_HELP = {
    "train": "train a model",
    "evaluate": "COCO mAP on dataset.test_data_sources",
    "inference": "detect objects in dataset.infer_data_sources",
    "export": "export a checkpoint to ONNX",
    "quantize": "post-training quantization",
    "gen_trt_engine": "build a TensorRT engine from an ONNX file",
    "default_specs": "write commented spec templates into results_dir",
    "automl": "hyperparameter search",
    "dataset": "check the data sources of the spec (report, plot)",
    "report": "rewrite report.html of the train, evaluate and automl runs in results_dir",
    "skill": "write the agent skill bundle (SKILL.md, schemas, spec templates) into results_dir",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SpecError(f"{self.prog}: {message} (see {self.prog} --help)")


def _add_spec_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-e",
        "--experiment_spec",
        "--experiment_spec_file",
        dest="spec",
        default=None,
        metavar="SPEC.yaml",
        help="experiment spec file (docs/SPEC.md)",
    )
    parser.add_argument("-r", "--results_dir", default=None, help="same as the override results_dir=DIR")
    parser.add_argument("-k", "--key", default=None, help="same as the override encryption_key=KEY")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # key=value overrides are collected from the unparsed arguments, so they may come before or after -e.
    parser.epilog = "Any number of dotted key=value overrides may follow, e.g. train.num_epochs=20."


PARENT_ACTIONS = ("train", "evaluate", "inference", "export", "quantize", "gen_trt_engine")


def _add_parent_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--parent",
        default=None,
        metavar="JOB",
        help="take the model file from this job's artefacts (same as parent_job_id=JOB; docs/jobs.md)",
    )
    parser.add_argument(
        "--select",
        default=None,
        metavar="WHICH",
        help="which artefact of the parent: best (highest val_mAP, the default), latest, epoch=N or step=N",
    )


def _add_jobs_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "command", choices=("list", "show", "tree", "best"), help="list jobs, show one, its lineage, its best"
    )
    parser.add_argument("job", nargs="?", default=None, metavar="JOB", help="job id (or a unique prefix)")
    parser.add_argument(
        "--db",
        default=None,
        help="registry file or SQLAlchemy URL (default: $DDETR_JOBS_DB, else ~/.ddetr/jobs.db)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--action", dest="only_action", default=None, help="list: only this action")
    parser.add_argument(
        "--status", default=None, help="list: only this status (running, success, failure, interrupted, lost)"
    )
    parser.add_argument("--limit", type=int, default=50, help="list: at most this many jobs (0: all)")
    parser.add_argument("--select", default="best", help="best: best|latest|epoch=N|step=N")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _jobs(args: argparse.Namespace) -> int:
    """``ddetr jobs ...``: print from the registry (no spec needed)."""
    import json

    from ddetr.jobs.registry import Registry
    from ddetr.jobs.view import best, list_table, show_text, tree, tree_lines

    registry = Registry(args.db)
    if args.command == "list":
        found = registry.list(action=args.only_action, status=args.status, limit=args.limit or None)
        if args.json:
            print(
                json.dumps([{k: v for k, v in j.to_dict().items() if k != "spec"} for j in found], indent=2)
            )
        else:
            print(list_table(found) if found else f"no jobs in {registry.shown}")
        return 0
    if not args.job:
        raise SpecError(f"ddetr jobs {args.command}: give a job id (see ddetr jobs list)")
    if args.command == "show":
        job = registry.get(args.job)
        print(json.dumps(job.to_dict(), indent=2) if args.json else show_text(job))
    elif args.command == "tree":
        data = tree(registry, args.job)
        print(json.dumps(data, indent=2) if args.json else "\n".join(tree_lines(data)))
    else:
        job, art = best(registry, args.job, args.select)
        if args.json:
            print(json.dumps({"job_id": job.id, **art.__dict__}, indent=2))
        else:
            print(art.path)
    return 0


CONVERT_DESCRIPTION = """\
Convert detection labels to one COCO json that a spec's json_file can name. Categories get ids 1..N in the
order of --classes (id 0 unused), so the spec needs dataset.num_classes: N + 1 (printed at the end).
Every image under --images becomes a COCO image (file_name relative to --images: use that folder as the
spec's image_dir); images without a label file are kept without boxes.

formats:
  voc    one .xml per image (anywhere under --labels); <filename> names the image; <bndbox> holds 1-based
         inclusive pixels, so x = xmin - 1, w = xmax - xmin + 1; class names compared exactly;
         difficult objects kept (marked "difficult": 1) unless --drop-difficult
  kitti  --labels/<image stem>.txt, 15 fields a line (type truncated occluded alpha x1 y1 x2 y2 h w l x y z
         rotation_y; a 16th score allowed), x1..y2 in pixels; DontCare skipped; class names compared
         case-insensitively (categories named as in --classes, else in lower case)
  yolo   --labels/<image stem>.txt, 'class cx cy w h' normalised to [0, 1]; class k becomes category k + 1;
         names from --classes (a text file or a data.yaml with names), else --labels/classes.txt, else class_<k>

A box crossing the image border is clipped (counted when by more than --tolerance pixels). A malformed
line, an unknown class, a box outside its image, a label file without an image or an unreadable image
stops the conversion with one line naming the file and line; nothing is written then.

example:
  ddetr convert voc --images VOC/JPEGImages --labels VOC/Annotations --classes classes.txt -o train.json
"""


def _add_convert_args(parser: argparse.ArgumentParser) -> None:
    """The ``convert`` sub-command's arguments."""
    from ddetr.data.formats import DEFAULT_TOLERANCE, FORMATS

    parser.description = CONVERT_DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("format", choices=FORMATS, help="layout of the labels (see formats above)")
    parser.add_argument(
        "--images", required=True, metavar="DIR", help="folder of the images (sub-folders included)"
    )
    parser.add_argument(
        "--labels", required=True, metavar="DIR", help="folder of the label files (.xml or .txt)"
    )
    parser.add_argument(
        "--classes",
        metavar="FILE",
        default=None,
        help="class names, one per line: line 1 is category id 1 (YOLO class 0); YOLO also takes a "
        "data.yaml with 'names'. Default: the sorted names found in the labels (YOLO: see above)",
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT.json",
        help="the COCO json to write (replaced if it exists)",
    )
    parser.add_argument(
        "--classmap",
        metavar="FILE",
        default=None,
        help="also write the class names, one per line, for dataset.infer_data_sources.classmap",
    )
    parser.add_argument(
        "--drop-difficult", action="store_true", help="voc: leave out objects marked <difficult>1</difficult>"
    )
    parser.add_argument(
        "--skip-unlisted",
        action="store_true",
        help="voc/kitti with --classes: leave out (and count) objects of classes not in the file instead of "
        "stopping, e.g. to keep only Car and Pedestrian from KITTI",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        metavar="PX",
        help=f"pixels a box may cross the image border before it is counted as clipped (default {DEFAULT_TOLERANCE:g})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one sub-command per action)."""
    parser = _Parser(
        prog="ddetr", description="Deformable DETR: train, evaluate, infer, export, quantize, deploy."
    )
    parser.add_argument("--version", action="version", version=f"ddetr {__version__}")
    sub = parser.add_subparsers(dest="action", metavar="action", required=True, parser_class=_Parser)
    for action in SPEC_ACTIONS:
        action_parser = sub.add_parser(action, help=_HELP[action])
        _add_spec_args(action_parser)
        if action in PARENT_ACTIONS:
            _add_parent_args(action_parser)
    _add_jobs_args(sub.add_parser("jobs", help="the job registry: list, show, tree, best (docs/jobs.md)"))
    weights = sub.add_parser("import_weights", help="convert original-repository or Hugging Face weights")
    weights.add_argument("--source", required=True, choices=("original", "hf"), help="layout of INPUT")
    weights.add_argument("input", metavar="INPUT", help="checkpoint file, or a Hugging Face model folder")
    weights.add_argument("output", metavar="OUTPUT.pth", help="ddetr checkpoint to write")
    weights.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _add_convert_args(sub.add_parser("convert", help="convert VOC / KITTI / YOLO labels to a COCO json"))
    return parser


_NOISY_LOGGERS = ("matplotlib", "PIL", "fsspec", "urllib3", "botocore", "numexpr")
# libraries' notes to their own developers (torchao/ModelOpt registering pytree types), shown only with -v
_CHATTER_LOGGERS = ("torch.utils._pytree",)


class _StripStream:
    """Writes to the current ``sys.stderr`` without the padding rich adds to fill its width."""

    def write(self, text: str) -> int:
        return sys.stderr.write(re.sub(r"[ \t]+\n", "\n", text))

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return False


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr through rich at INFO (DEBUG when ``verbose``); call once, from an entry point."""
    from rich.console import Console
    from rich.logging import RichHandler

    from ddetr.tasks.lock import is_secondary_rank

    root = logging.getLogger()
    # the other processes of a multi-process run repeat rank 0's log: only their warnings and errors show
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if is_secondary_rank() else logging.INFO)
    for noisy in _NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    for chatter in _CHATTER_LOGGERS:
        logging.getLogger(chatter).setLevel(logging.DEBUG if verbose else logging.ERROR)
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        if sys.stderr.isatty():
            console = Console(stderr=True)
        else:  # a log file or a pipe: one line per message, no wrapping, no padding
            console = Console(file=_StripStream(), width=100_000, no_color=True)
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    logging.captureWarnings(True)


def summary_line(action: str, result: Any) -> str:
    """``<action> finished: k=v, ...`` from a result's ``summary()`` (a mapping's scalar values also do)."""
    if hasattr(result, "summary"):
        items = result.summary()
    elif isinstance(result, dict):
        items = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}
    else:
        items = {}
    text = ", ".join(f"{k}={v}" for k, v in items.items())
    return f"{action} finished" + (f": {text}" if text else "")


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    """Call the API for the parsed arguments; what the command prints besides the log."""
    from ddetr import api

    if args.action in ("import_weights", "convert") and extra:
        shown = [
            "encryption_key=..." if a.startswith("encryption_key=") else a for a in extra
        ]  # never the key
        raise SpecError(f"ddetr {args.action}: unrecognized arguments: {' '.join(shown)}")
    if args.action == "jobs":
        if extra:
            raise SpecError(f"ddetr jobs: unrecognized arguments: {' '.join(extra)}")
        return _jobs(args)
    if args.action == "import_weights":
        imported = api.import_weights(args.source, args.input, args.output)
        print(f"imported {imported.describe()}")
        return 0
    if args.action == "convert":
        converted = api.convert(
            args.format,
            args.images,
            args.labels,
            args.output,
            classes=args.classes,
            classmap=args.classmap,
            drop_difficult=args.drop_difficult,
            skip_unlisted=args.skip_unlisted,
            tolerance=args.tolerance,
        )
        print("\n".join(converted.lines()))
        return 0
    from ddetr.spec.load import parse_overrides

    overrides = parse_overrides(extra)
    if args.results_dir is not None:
        overrides.append(f"results_dir={args.results_dir}")
    # -k is the key verbatim (a Python value, never parsed as YAML)
    keyword = {"encryption_key": args.key} if args.key is not None else {}
    if getattr(args, "parent", None) is not None:  # passed as Python strings: an id of digits stays a string
        keyword["parent_job_id"] = args.parent
    if getattr(args, "select", None) is not None:
        keyword["parent_select"] = args.select
    result = api.run_action(args.action, args.spec, overrides=overrides, **keyword)
    logger.info(summary_line(args.action, result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ddetr`` / ``deformable_detr`` / ``python -m ddetr``.

    Returns:
        0 on success, 2 on a user error (one line on stderr), 1 on any other exception (one line
        ``error: <type>: <message> (run with -v for the traceback)``; with ``-v`` the traceback is printed
        first), 130 on Ctrl-C, 143 on SIGTERM (training).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    try:
        try:
            args, extra = build_parser().parse_known_args(argv)
        except SystemExit as exc:  # --help and --version
            return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USER_ERROR
        verbose = bool(getattr(args, "verbose", False))
        setup_logging(verbose)
        return _run(args, extra)
    except DdetrError as exc:
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the last resort: a bug we have not found yet still ends in one line
        if verbose:
            traceback.print_exc(file=sys.stderr)
        message = " ".join(str(exc).split()) or "(no message)"
        hint = "" if verbose else " (run with -v for the traceback)"
        print(f"error: {type(exc).__name__}: {message}{hint}", file=sys.stderr)
        return EXIT_UNEXPECTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
