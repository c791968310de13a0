"""Subcommands that work on files, with no daemon: ``validate``, ``schema``, ``new``, ``run``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from reconciler.cli.common import EXIT_ERROR, EXIT_OK, EXIT_USAGE, SPEC_SUFFIX, plural
from reconciler.errors import InvalidSpec

# --- validate -------------------------------------------------------------------------


def _validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help=f"a spec file, or a directory: every *{SPEC_SUFFIX} file directly in it",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        action="append",
        default=[],
        help="also check a manager config file (reconciler run --config); repeatable",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print only problems, not an ok line per file"
    )


def cmd_validate(args: argparse.Namespace) -> int:
    """Check spec files as the reconciler would load them; list every problem of every file."""
    if not args.paths and not args.config:
        print("reconciler validate: give PATH... and/or --config FILE", file=sys.stderr)
        return EXIT_USAGE
    checked = failed = problem_count = 0
    for display, problems in [*_check_paths(args.paths), *map(_check_config, args.config)]:
        checked += 1
        if problems:
            failed += 1
            problem_count += len(problems)
            for problem in problems:
                print(problem, file=sys.stderr)
        elif not args.quiet:
            print(f"ok {display}")
    if failed:
        print(
            f"{InvalidSpec.code}: {plural(problem_count, 'problem')} in "
            f"{failed} of {plural(checked, 'file')}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


def _check_config(path: Path) -> tuple[str, list[str]]:
    from reconciler.spec import parse_manager_config

    try:
        parse_manager_config(path.read_bytes(), filename=str(path))
    except OSError as exc:
        return str(path), [f"{path}: cannot read: {exc.strerror}"]
    except InvalidSpec as exc:
        return str(path), list(exc.problems)
    return str(path), []


def _check_paths(paths: list[str]) -> Iterator[tuple[str, list[str]]]:
    """(file as shown, its problems) for every spec file the paths name.

    A directory is checked as the reconciler loads it, ``after`` across its
    files included; a single file's ``after`` is checked against the spec
    files beside it.
    """
    from reconciler.spec import is_ignored_filename

    for path in paths:
        if not Path(path).is_dir():
            problems, after = _check_file(path)
            if after:
                known = _ids_in(os.path.dirname(path) or ".")
                stem = os.path.basename(path).removesuffix(SPEC_SUFFIX)
                problems += _after_problems({stem: after}, known | {stem}, path).values()
            yield path, problems
            continue
        try:
            names = sorted(entry.name for entry in os.scandir(path))
        except OSError as exc:
            yield path, [f"{path}: cannot read directory: {exc.strerror or exc}"]
            continue
        # The same rule the reconciler's directory watcher applies.
        spec_names = [name for name in names if not is_ignored_filename(name)]
        if not spec_names:
            print(f"{path}: no *{SPEC_SUFFIX} spec files here", file=sys.stderr)
        checked = {}
        afters: dict[str, tuple[str, ...]] = {}
        for name in spec_names:
            display = os.path.join(path, name)
            checked[name], after = _check_file(display)
            if not checked[name]:
                afters[name.removesuffix(SPEC_SUFFIX)] = after
        known = {name.removesuffix(SPEC_SUFFIX) for name in spec_names}
        for cid, problem in _after_problems(afters, known, path).items():
            checked[cid + SPEC_SUFFIX].append(problem)
        for name in spec_names:
            yield os.path.join(path, name), checked[name]


def _ids_in(directory: str) -> set[str]:
    from reconciler.spec import is_ignored_filename

    try:
        names = [entry.name for entry in os.scandir(directory)]
    except OSError:
        return set()
    return {n.removesuffix(SPEC_SUFFIX) for n in names if not is_ignored_filename(n)}


def _after_problems(
    afters: dict[str, tuple[str, ...]], known: set[str], shown: str
) -> dict[str, str]:
    """Problems of ``after`` across files, each naming the file as given (``shown``: the
    file itself, or the directory holding them)."""
    from reconciler.spec.order import after_problems

    prefix = shown if shown.endswith(SPEC_SUFFIX) else None
    return {
        cid: (prefix or os.path.join(shown, cid + SPEC_SUFFIX)) + problem[problem.index(":") :]
        for cid, problem in after_problems(afters, known=known).items()
    }


def _check_file(path: str) -> tuple[list[str], tuple[str, ...]]:
    """The file's problems, and (when it is valid) its ``after``."""
    from reconciler.spec import is_ignored_filename, parse_spec

    name = os.path.basename(path)
    if is_ignored_filename(name):
        # Named on the command line, but the reconciler would never load it.
        return [
            f"{path}: file name: not a spec file, the reconciler ignores it "
            f'(spec files are named <id>{SPEC_SUFFIX} and do not start with ".")'
        ], ()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return [f"{path}: cannot read: {exc.strerror or exc}"], ()
    try:
        spec = parse_spec(data, filename=path, collector_id=name.removesuffix(SPEC_SUFFIX))
    except InvalidSpec as exc:
        return list(exc.problems), ()
    return [], spec.after


# --- schema ---------------------------------------------------------------------------


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of spec files."""
    from reconciler.spec import json_schema

    del args
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


# --- new ------------------------------------------------------------------------------


def _new_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="collector id: the spec file's name without .toml")
    parser.add_argument("--type", metavar="T", help="collector type (default: the id)")
    parser.add_argument("--binary", metavar="B", help="binary_path (default: looked up by type)")
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help=f"write FILE (named ID{SPEC_SUFFIX}; a directory means DIR/ID{SPEC_SUFFIX}) "
        "instead of stdout",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing FILE")


def cmd_new(args: argparse.Namespace) -> int:
    """Write a valid starter spec to stdout or a file."""
    from reconciler.spec import starter_spec

    text = starter_spec(
        args.id, collector_type=args.type, binary_path=args.binary, args=args.passthrough
    )
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    target = Path(args.output)
    if target.is_dir():
        target = target / f"{args.id}{SPEC_SUFFIX}"
    expected = f"{args.id}{SPEC_SUFFIX}"
    if target.name != expected:
        # The file name is the id: any other name would define another collector.
        print(
            f"{target}: file name: must be {expected}, since the file name is the collector id "
            f'(this name would define "{target.name.removesuffix(SPEC_SUFFIX)}", '
            f'not "{args.id}")',
            file=sys.stderr,
        )
        return EXIT_ERROR
    try:
        _write_file(target, text, overwrite=args.force)
    except FileExistsError:
        print(f"{target}: already exists (use --force to overwrite it)", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"{target}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"wrote {target}", file=sys.stderr)
    return EXIT_OK


def _write_file(target: Path, text: str, *, overwrite: bool) -> None:
    """Write ``target`` all at once, as a watching reconciler must never see half a spec.

    The text goes to a hidden temporary file next to it (ignored by the
    watcher, being a dot file), which then takes the final name: ``os.replace``
    to overwrite, ``os.link`` otherwise, which fails if the name was taken
    meanwhile instead of clobbering it. Raises ``FileExistsError``.
    """
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    # 0644 less the umask, like any new file; never group/world-writable by default,
    # which a reconciler running as root would refuse.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        if overwrite:
            os.replace(temporary, target)
        else:
            os.link(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


# --- run ------------------------------------------------------------------------------


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="manager config (TOML)")
    parser.add_argument("--specs", type=Path, metavar="DIR", help="the spec directory to watch")
    parser.add_argument("--state-dir", type=Path, metavar="DIR", help="state file and logs")
    parser.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help="metrics listener (/metrics, /healthz, /readyz); port 0 picks one and logs it",
    )
    parser.add_argument("--socket", type=Path, metavar="PATH", help="control API unix socket")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO"
    )


def cmd_run(args: argparse.Namespace) -> int:
    # Imported here: the daemon pulls in the whole runtime, which the quick
    # client commands do not need; and without OpenSSL, which it needs only for https
    # probes, or importlib.metadata (reconciler.imports).
    from reconciler.imports import for_the_daemon

    with for_the_daemon():
        from reconciler.daemon import RunOptions, run

    return run(
        RunOptions(
            config_path=args.config,
            specs_dir=args.specs,
            state_dir=args.state_dir,
            metrics_address=args.metrics_address,
            socket_path=Path(args.socket) if args.socket is not None else None,
            log_format=args.log_format,
            log_level=args.log_level,
        )
    )

