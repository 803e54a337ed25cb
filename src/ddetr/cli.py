"""The ``ddetr`` command line: argument parsing only.

``ddetr <action> -e spec.yaml key=value ...`` loads and validates the spec, then calls
``ddetr.tasks.<action>.run(spec)``. User errors (:class:`~ddetr.errors.DdetrError`) print one line,
``error: <message>``, and exit with code 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from ddetr._version import __version__
from ddetr.crypto import KEY_ENV
from ddetr.errors import DdetrError, Interrupted, SpecError

logger = logging.getLogger(__name__)

SPEC_ACTIONS: tuple[str, ...] = (
    "train",
    "evaluate",
    "inference",
    "export",
    "quantize",
    "gen_trt_engine",
    "default_specs",
    "automl",
    "dataset",
)
EXIT_USER_ERROR = 2
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one sub-command per action)."""
    parser = _Parser(
        prog="ddetr", description="Deformable DETR: train, evaluate, infer, export, quantize, deploy."
    )
    parser.add_argument("--version", action="version", version=f"ddetr {__version__}")
    sub = parser.add_subparsers(dest="action", metavar="action", required=True, parser_class=_Parser)
    for action in SPEC_ACTIONS:
        _add_spec_args(sub.add_parser(action, help=_HELP[action]))
    weights = sub.add_parser("import_weights", help="convert original-repository or Hugging Face weights")
    weights.add_argument("--source", required=True, choices=("original", "hf"), help="layout of INPUT")
    weights.add_argument("input", metavar="INPUT", help="checkpoint file, or a Hugging Face model folder")
    weights.add_argument("output", metavar="OUTPUT.pth", help="ddetr checkpoint to write")
    weights.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    from ddetr.tasks.convert import add_arguments as add_convert_arguments

    add_convert_arguments(sub.add_parser("convert", help="convert VOC / KITTI / YOLO labels to a COCO json"))
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

    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
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


def _import_task(action: str) -> Any:
    name = f"ddetr.tasks.{action}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise DdetrError(f"action {action} is not available yet") from None
        raise


def _run_spec_action(args: argparse.Namespace) -> int:
    from ddetr.spec.load import load_spec, parse_overrides

    overrides = parse_overrides(args.overrides)
    if args.results_dir is not None:
        overrides.append(f"results_dir={args.results_dir}")
    if args.key is not None:
        overrides.append(f"encryption_key={args.key}")
    spec = load_spec(args.spec, overrides, action=args.action)
    if not spec.encryption_key and os.environ.get(KEY_ENV):
        spec = spec.model_copy(update={"encryption_key": os.environ[KEY_ENV]})  # keeps the key out of argv
    task = _import_task(args.action)
    run = getattr(task, "run", None)
    if not callable(run):
        raise DdetrError(f"action {args.action} is not available yet")
    result = run(spec)
    if isinstance(result, dict) and result:
        summary = ", ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, (dict, list)))
        logger.info(f"{args.action} finished" + (f": {summary}" if summary else ""))
    return 0


def _run_import_weights(args: argparse.Namespace) -> int:
    try:
        weights = importlib.import_module("ddetr.model.weights")
    except ModuleNotFoundError as exc:
        if exc.name == "ddetr.model.weights":
            raise DdetrError("action import_weights is not available yet") from None
        raise
    return int(weights.main_import(args.source, args.input, args.output))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ddetr`` / ``deformable_detr`` / ``python -m ddetr``.

    Returns:
        0 on success, 2 on a user error (one line on stderr), 130 on Ctrl-C.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            args, extra = build_parser().parse_known_args(argv)
        except SystemExit as exc:  # --help and --version
            return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USER_ERROR
        setup_logging(getattr(args, "verbose", False))
        if args.action in ("import_weights", "convert") and extra:
            raise SpecError(f"ddetr {args.action}: unrecognized arguments: {' '.join(extra)}")
        if args.action == "import_weights":
            return _run_import_weights(args)
        if args.action == "convert":
            from ddetr.tasks.convert import main as convert_main

            return convert_main(args)
        args.overrides = extra
        return _run_spec_action(args)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
