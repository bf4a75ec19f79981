"""The ``rayrelay`` command: validate, crds, run, operator and edge-check.

``validate`` and ``crds`` only need ``rayrelay_core`` (pydantic, PyYAML). ``run``
(``rayrelay_operator.local``) and ``operator`` (``rayrelay_operator.runner``) pull
in Ray, torch or kopf, so they are imported only when those subcommands run:
``rayrelay validate`` stays fast and works in a light install. ``edge-check`` starts
``rayrelay_workloads/edge_check.py`` with the LiteRT environment's Python (``make litert``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import rayrelay_core.crdgen as crdgen
from rayrelay_core.validation import ManifestParseError, cross_checks, load_documents, validate_document


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    return Path(path).read_text(encoding="utf-8")


def _is_v1_secret(doc: object) -> bool:
    return isinstance(doc, dict) and doc.get("apiVersion") == "v1" and doc.get("kind") == "Secret"


def validate_command(args: argparse.Namespace) -> int:
    """Print one line per problem; exit 1 on any, else a one-line summary."""
    try:
        text = _read(args.file)
    except OSError as exc:
        print(f"{args.file}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 1
    source = "<stdin>" if args.file == "-" else args.file
    try:
        docs = load_documents(text)
    except ManifestParseError as exc:
        print(f"{source}: {exc}")
        return 1
    if not docs:
        print(f"{source}: no resources found")
        return 1
    names: list[str] = []
    failed = 0
    # v1 Secrets (the encryption key `rayrelay run` takes from FILE) are Kubernetes' to check.
    kept = [(i, d) for i, d in enumerate(docs, start=1) if not _is_v1_secret(d)]
    docs = [d for _, d in kept]
    for index, doc in kept:
        issues = validate_document(doc, index=index)
        if issues:
            failed += 1
            for issue in issues:
                print(issue)
        else:
            names.append(f"{doc['kind']}/{doc['metadata']['name']}")
    if not failed:
        # Between documents (the same check as `rayrelay run`'s): duplicates, dangling references.
        across = cross_checks(docs)
        for issue in across:
            print(issue)
        failed = len({(issue.kind, issue.name) for issue in across})
    if failed:
        sys.stdout.flush()  # the error lines come before the summary, even when piped
        print(f"{failed} of {len(docs)} resource(s) invalid", file=sys.stderr)
        return 1
    noun = "resource" if len(names) == 1 else "resources"
    print(f"{len(names)} {noun} valid ({', '.join(names)})")
    return 0


def crds_command(args: argparse.Namespace) -> int:
    """Write crds/ and docs/resources.md, or (--check) report which are stale."""
    if args.check:
        stale = crdgen.stale_files(args.dir, args.docs)
        for path in stale:
            print(f"{path}: differs from what the models generate; run `rayrelay crds`")
        if stale:
            return 1
        print(f"{args.dir}/ and {args.docs} are up to date")
        return 0
    written = crdgen.write_all(args.dir, args.docs)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"{args.dir}/ and {args.docs} already up to date")
    return 0


def _run(args: argparse.Namespace) -> int:
    from rayrelay_operator.local import run_command  # heavy: Ray, torch

    return int(run_command(args))


def _operator(args: argparse.Namespace) -> int:
    from rayrelay_operator.runner import operator_command  # heavy: kopf, kubernetes

    return int(operator_command(args))


def _edge_check(args: argparse.Namespace) -> int:
    import subprocess

    from rayrelay_workloads import litert  # stdlib only at import; finds the LiteRT environment

    try:
        python = args.python or str(litert.litert_python())
    except litert.LiteRTUnavailable as exc:
        print(f"edge-check: {exc}", file=sys.stderr)
        return 1
    return subprocess.call([python, str(litert.EDGE_SCRIPT), args.manifest, *args.edge_args])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayrelay",
        description="Train transformers models with Ray Train and serve them as ONNX with Ray Serve.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check manifests offline with the CRDs' rules")
    p.add_argument("-f", "--file", required=True, help="YAML file (several documents allowed) or - for stdin")
    p.set_defaults(func=validate_command)

    p = sub.add_parser("crds", help="write (or --check) crds/ and docs/resources.md")
    p.add_argument("--check", action="store_true", help="exit 1 when a generated file is stale")
    p.add_argument("--dir", default=crdgen.CRD_DIR, help="CRD folder (default: %(default)s)")
    p.add_argument("--docs", default=crdgen.DOCS_PATH, help="field reference (default: %(default)s)")
    p.set_defaults(func=crds_command)

    p = sub.add_parser("run", help="run every resource in FILE locally")
    p.add_argument("-f", "--file", required=True, help="YAML file or - for stdin")
    p.add_argument("--artifacts", metavar="URI", help="artifact store (file:// or s3://)")
    p.add_argument("--ray-address", metavar="ADDR", help="an existing Ray cluster (default: start one)")
    p.add_argument(
        "--once", action="store_true", help="exit 0 once deployments are Ready and a smoke request passed"
    )
    p.set_defaults(func=_run)

    p = sub.add_parser("operator", help="run the operator (kopf) against a Kubernetes cluster")
    p.add_argument(
        "--namespace", "-n", action="append", default=[], metavar="NS", help="namespace (repeatable)"
    )
    p.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    p.add_argument("--standalone", action="store_true", help="no peering with other operator instances")
    p.add_argument("--liveness", metavar="URL", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument(
        "--peering", metavar="NAME", help="peering object name (default: rayrelay; not with --standalone)"
    )
    p.add_argument(
        "--peering-lifetime",
        type=int,
        metavar="SECONDS",
        help="validity of a replica's keep-alive: a standby takes over at most this long after the"
        " leader dies (default: RAYRELAY_PEERING_LIFETIME_SECONDS or 10)",
    )
    p.add_argument(
        "--priority",
        type=int,
        metavar="N",
        help="peering priority; the highest live one reconciles (default: derived from POD_NAME, below 2**30)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="verbose logging")
    p.set_defaults(func=_operator)

    p = sub.add_parser(
        "edge-check",
        help="run a run's model.tflite with the LiteRT interpreter alone: predictions and latency",
        description=(
            "Runs rayrelay_workloads/edge_check.py (ai-edge-litert, tokenizers and numpy only) with the "
            "LiteRT environment's Python (make litert), or --python. Arguments after MANIFEST go to it: "
            "--variant fp32-tflite|int8-tflite, --text ..., --jsonl FILE, --threads N, --repeats N, --json."
        ),
    )
    p.add_argument("manifest", help="the run's manifest.json (a path or file:// URI)")
    p.add_argument("--python", help="a Python with ai-edge-litert, tokenizers and numpy")
    p.add_argument("edge_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=_edge_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
