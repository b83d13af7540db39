"""One command-line style (absl flags) for every entry point, and the ``jaxbn`` console script.

``jaxbn COMMAND [FLAGS]`` runs ``python -m MODULE [FLAGS]`` for::

    train        jaxbn.main                  (--config=configs/bn_only.py --workdir=DIR)
    sweep        jaxbn.sweep
    report       jaxbn.report
    convert      jaxbn.convert               (a PyTorch checkpoint → a converted directory)
    predict      jaxbn.predict
    bench        jaxbn.bench
    similarity   jaxbn.analysis.similarity
    filters      jaxbn.analysis.filters
    convergence  jaxbn.analysis.convergence

The trainer-side commands (train, sweep, convert, predict, bench) define their
flags on absl's global ``FLAGS`` and run under ``app.run``. The report and
analysis commands are also called as functions (``report.main([...])``), so
their flags live in a module-level ``flags.FlagValues`` each (several of them
share flag names such as ``--out``): :func:`parse` reads them with absl and
:func:`run` is their ``app.run``.
"""

from __future__ import annotations

import logging as pylogging
import runpy
import sys
import types
from typing import Callable, Sequence

from absl import app, flags, logging

COMMANDS = {
    "train": "jaxbn.main",
    "sweep": "jaxbn.sweep",
    "report": "jaxbn.report",
    "convert": "jaxbn.convert",
    "predict": "jaxbn.predict",
    "bench": "jaxbn.bench",
    "similarity": "jaxbn.analysis.similarity",
    "filters": "jaxbn.analysis.filters",
    "convergence": "jaxbn.analysis.convergence",
}
HELP = ("-h", "--help", "--helpshort", "-?")
_prog: str | None = None  # "jaxbn COMMAND" while the console script runs one


class _QuietLibraries(pylogging.Filter):
  """Drops the INFO chatter of JAX, orbax and TFDS (their warnings and errors are kept)."""

  NOISY = ("/jax/", "/orbax/", "/tensorflow_datasets/", "/absl/logging/")

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or not any(n in record.pathname for n in self.NOISY)


def quiet_library_logs() -> None:
  """Keeps the console to jaxbn's own lines: other libraries' INFO records are dropped."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


def _usage_error(prog: str, message: str) -> SystemExit:
  print(f"error: {message} (see {prog} --help)", file=sys.stderr)
  return SystemExit(2)


def parse(flag_values: flags.FlagValues, argv: Sequence[str] | None, *, prog: str,
          doc: str = "", positional: str | None = None) -> types.SimpleNamespace:
  """Parses ``argv`` (no program name; None: ``sys.argv[1:]``) into ``flag_values``.

  Returns the flags' values as attributes, plus the remaining arguments as
  ``positional`` (a list that must not be empty) when it is given; extra
  arguments are an error otherwise. ``--help`` prints ``doc`` and the flags
  and exits 0; a bad, unknown or missing flag exits 2 after one ``error:``
  line. Each call starts from the defaults.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  prog = _prog or prog  # run as a `jaxbn` subcommand
  if any(a in HELP for a in argv):
    print(f"usage: {prog} [FLAGS]" + (f" {positional.upper()}..." if positional else ""))
    if doc:
      print(f"\n{doc.strip()}")
    print("\nflags:")
    for name in sorted(flag_values):
      flag = flag_values[name]
      print(f"  --{name}: {flag.help} (default: {flag.default!r})")
    raise SystemExit(0)
  for name in flag_values:  # back to the defaults (unparse_flags() would log about it)
    flag_values[name].unparse()
  try:
    rest = flag_values([prog, *argv])[1:]
  except flags.Error as e:
    raise _usage_error(prog, str(e).splitlines()[0].rstrip(".")) from None
  values = {name: flag_values[name].value for name in flag_values}
  if positional is not None:
    if not rest:
      raise _usage_error(prog, f"give at least one {positional.upper().rstrip('S')}")
    values[positional] = rest
  elif rest:
    raise _usage_error(prog, f"unexpected arguments {rest}")
  return types.SimpleNamespace(**values)


def _absl_flags_only(argv: list[str]) -> list[str]:
  """``app.run``'s parser: absl's own flags (--verbosity, --logtostderr …); the rest stays."""
  rest = flags.FLAGS([a for a in argv if a not in HELP], known_only=True)
  return rest + [a for a in argv[1:] if a in HELP]


def run(main: Callable[[list[str]], int]) -> None:
  """``app.run`` for a command whose ``main(argv) -> int`` parses its own flags (:func:`parse`)."""
  def run_main(argv: list[str]) -> None:
    quiet_library_logs()
    sys.exit(main(argv[1:]))

  app.run(run_main, flags_parser=_absl_flags_only)


def main(argv: Sequence[str] | None = None) -> None:
  """The ``jaxbn`` console script: ``jaxbn COMMAND [FLAGS]`` = ``python -m MODULE [FLAGS]``."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in HELP:
    print("\n\n".join(__doc__.split("\n\n")[1:3]) if argv else "usage: jaxbn COMMAND [FLAGS]; "
          f"commands: {', '.join(COMMANDS)} (jaxbn --help for more)")
    raise SystemExit(0 if argv else 2)
  command, rest = argv[0], argv[1:]
  if command not in COMMANDS:
    print(f"error: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}.",
          file=sys.stderr)
    raise SystemExit(2)
  global _prog
  _prog = f"jaxbn {command}"
  sys.argv = [_prog, *rest]
  # As `python -m MODULE`: the module runs as __main__ (absl's --help shows its docstring).
  runpy.run_module(COMMANDS[command], run_name="__main__", alter_sys=True)


__all__ = ["COMMANDS", "main", "parse", "run"]

if __name__ == "__main__":  # python -m jaxbn.cli: run the imported module's main
  from jaxbn import cli as _cli

  _cli.main()
