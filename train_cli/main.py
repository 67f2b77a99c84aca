"""The ``zoo`` command: a thin click app over zoo's registry and engine.

Errors a user causes print one line and exit 2 (usage) or 1 (runtime);
``--debug`` or ``ZOO_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

import zoo
from train_cli.completion import plugin_names
from train_cli.jobs import said_here
from zoo.errors import ZooError
from zoo.registry import Registry, get_registry

ABORTED = "zoo: aborted; nothing more was saved (--resume goes on from the last checkpoint, if one was written)."
INTERRUPTED = "zoo: interrupted."  # commands other than train: nothing to go on from

_WARNED = False
_TRACED = False


class Context:
    """What every command gets: the global flags and the lazily discovered registry."""

    def __init__(self, debug: bool, disabled: tuple[str, ...]) -> None:
        self.debug = debug
        self.disabled = disabled

    def registry(self, warn: bool = True) -> Registry:
        """The plugin registry; other commands than ``list`` warn once, in one line, of broken plugins."""
        global _WARNED
        registry = get_registry(self.disabled)
        broken = registry.broken()
        global _TRACED
        if self.debug and not _TRACED:  # where each broken plugin failed
            _TRACED = True
            for plugin in broken:
                if plugin.traceback:
                    click.echo(f"zoo: plugin {plugin.name} failed here:\n{plugin.traceback.rstrip()}", err=True)
        if warn and broken and not _WARNED:
            _WARNED = True
            names = ", ".join(f"{p.name} ({p.status}: {p.error})" for p in broken)
            click.echo(f"zoo: warning: plugin(s) skipped: {names}; 'zoo list plugins' shows details.",
                       err=True)
        return registry


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(zoo.__version__, prog_name="zoo")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors (or set ZOO_DEBUG=1).")
@click.option("--disable-plugin", "disabled", multiple=True, metavar="NAME", shell_complete=plugin_names,
              help="Skip an installed plugin (repeatable; also ZOO_DISABLE_PLUGINS=a,b).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, disabled: tuple[str, ...]) -> None:
    """zoo: train, test and browse PyTorch models from plugins.

    \b
      zoo list                                    everything installed, with its plugin
      zoo info dcgan                              options, losses and datasets of a model
      zoo train --model dcgan --loss perceptual   train on the embedded default dataset
      zoo test --run runs/<run>                   metrics of a run on its test split
      zoo sample --run runs/<run>                 a PNG grid from a generative run
      zoo predict --run runs/<run> IMAGE...       classes or restored images
      zoo export --run runs/<run> --format onnx   the predictor as a file, checked against PyTorch
      zoo runs                                    the runs under runs/: status, steps, best metric
      zoo diff runs/<a> runs/<b>                  two runs' config differences and metrics
      zoo new-plugin my_plugin                    a plugin package to start from
      zoo check my_plugin                         does an installed plugin keep zoo's contracts?
    """
    ctx.obj = Context(debug, disabled)


COMMANDS = ("list", "info", "train", "test", "sample", "predict", "export", "runs", "diff", "check",
            "new-plugin")  # in train_cli/<name>.py


def _register_commands() -> None:
    """Add each command to the group, from the module named after it."""
    for name in COMMANDS:
        module_name = name.replace("-", "_")  # as <module>_command
        module = importlib.import_module(f"train_cli.{module_name}")
        cli.add_command(getattr(module, f"{module_name}_command"))


_register_commands()


def _debug_requested(argv: list[str]) -> bool:
    """Whether ``--debug`` or ``ZOO_DEBUG`` asks for tracebacks (known before click parses anything)."""
    options = argv[:argv.index("--")] if "--" in argv else argv  # after --, arguments (a file named --debug)
    return "--debug" in options or os.environ.get("ZOO_DEBUG", "").strip().lower() in {"1", "true", "yes"}


def _global_options_first(argv: list[str], debug: bool) -> list[str]:
    """Move ``--debug`` and ``--disable-plugin NAME`` before the command, where click takes them.

    So ``zoo train --debug ...`` and ``zoo train --disable-plugin NAME ...`` work as users write them.
    """
    front, rest = (["--debug"] if debug else []), []
    arguments = iter(argv)
    for arg in arguments:
        if arg == "--":
            rest += [arg, *arguments]
        elif arg == "--debug":
            continue
        elif arg == "--disable-plugin":
            value = next(arguments, None)
            if value is None:
                raise click.exceptions.UsageError("Option '--disable-plugin' requires an argument.")
            front += [arg, value]
        elif arg.startswith("--disable-plugin="):
            front.append(arg)
        else:
            rest.append(arg)
    return front + rest


def _command_of(argv: list[str]) -> str | None:
    """The command ``argv`` runs (``train``, ``test``...): its first word that is not a global option."""
    arguments = iter(argv)
    for arg in arguments:
        if arg == "--disable-plugin":
            next(arguments, None)  # its value
        elif not arg.startswith("-"):
            return arg
    return None


def _interrupted(argv: list[str], train_message: str) -> int:
    """Say that Ctrl-C stopped the command (only a training run goes on with --resume); return the exit code."""
    click.echo(train_message if _command_of(argv) == "train" else INTERRUPTED, err=True)
    return 130


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among ``exc``'s causes (Ctrl-C that surfaced as another error)."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _plugin_to_blame(exc: BaseException) -> str | None:
    """The line naming the plugin whose code raised ``exc`` (its innermost frame), or None for zoo's own bugs."""
    try:
        from zoo.blame import blame
        found = blame(exc, get_registry())
    except Exception:  # naming the plugin must never hide the error itself
        return None
    return found.message(exc) if found is not None else None


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app and turn errors into one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    try:
        argv = _global_options_first(argv, debug)
        code = cli.main(args=argv, prog_name="zoo", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "zoo"
        message = exc.format_message()
        if message.startswith("Got unexpected extra argument") and command.endswith(("train", "test")):
            message += "; a glob given to --data must be quoted ('photos/*.jpg'), or the shell expands it"
        click.echo(f"zoo: error: {message} (see '{command} --help')", err=True)
        code = 2
    except click.exceptions.Abort:  # click's form of a KeyboardInterrupt
        code = _interrupted(argv, ABORTED)
    except ZooError as exc:
        if debug:
            traceback.print_exc()
        message = str(exc)
        if said_here(exc):  # a job of several processes says each error once
            click.echo(message if message.startswith("zoo:") else f"zoo: error: {message}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        code = _interrupted(argv, "zoo: aborted without saving.")
    except BrokenPipeError:
        code = 0
    except Exception as exc:  # a bug: say so in one line unless debugging
        if _caused_by_interrupt(exc):  # Ctrl-C while a module was importing surfaces wrapped
            sys.exit(_interrupted(argv, ABORTED))
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (run with --debug for the traceback)"
        blamed = _plugin_to_blame(exc)
        if blamed is not None:
            click.echo(f"zoo: error: {blamed}{hint}", err=True)
        else:
            click.echo(f"zoo: internal error: {type(exc).__name__}: {exc}{hint}", err=True)
        code = 1
    _exit(code or 0)


def _exit(code: int) -> None:
    """Exit with ``code``. A process of a several-process job that ends in an error (said already) leaves at once:
    torch's gloo threads can abort the interpreter's teardown (SIGABRT), which would hide the code from the launcher."""
    if code and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
