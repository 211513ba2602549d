"""The ``vollseg-dask`` command-line interface.

One module per subcommand (as in ultrack). The group resolves a subcommand's
module only when that subcommand is invoked, so ``vollseg-dask --help`` imports
neither Dask nor TensorFlow.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

# name -> (module under vollseg_dask.cli, one-line help). Help is duplicated here
# so that listing commands does not import their modules.
COMMANDS: dict[str, tuple[str, str]] = {
    "create-config": ("create_config", "Write a configuration file holding every default."),
    "synthetic": ("synthetic", "Write a synthetic membrane time-lapse with ground truth to OME-Zarr."),
    "convert": ("convert", "Convert TIFF / HDF5 / .npy into an OME-Zarr image, chunk by chunk."),
    "info": ("info", "Describe an OME-Zarr store: axes, shape, chunks, scale, levels, labels."),
    "segment": ("segment", "Segment a store block by block (VollSeg) into a labels group."),
    "evaluate": ("evaluate", "Compare predicted labels with ground truth (IoU matching, F1, AP...)."),
    "measure": ("measure", "Per-cell attribute table (Parquet) from a labels group."),
    "track": ("track", "Track cells with TrackMate's LAP tracker, out of core."),
    "export": ("export", "Export tracks as TrackMate XML, CTC, napari data or GEFF."),
    "train": ("train", "Train StarDist3D, U-Net and Noise2Void from a config."),
    "optimize-thresholds": ("optimize_thresholds", "Choose StarDist probability/NMS thresholds."),
    "analyze": ("analyze", "Track analysis: distance to boundary, oscillations, divisions."),
    "run": ("run", "Run the whole pipeline from a config, resumably."),
    "demo": ("demo", "Run the pipeline end to end on synthetic data with a local cluster."),
}


def _available(module: str) -> bool:
    return importlib.util.find_spec(f"vollseg_dask.cli.{module}") is not None


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when it is run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (mod, _) in COMMANDS.items() if _available(mod)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS or not _available(COMMANDS[cmd_name][0]):
            return None
        module = importlib.import_module(f"vollseg_dask.cli.{COMMANDS[cmd_name][0]}")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Use the help strings above instead of importing every subcommand module.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vollseg-dask")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """vollseg-dask: chunked VollSeg segmentation and LAP tracking of 3D+t microscopy.

    Quiet by default (warnings, progress bars and one line per Dask cluster started); -v shows the
    libraries' INFO logs (Dask, TensorFlow), -vv debug.
    """
    from vollseg_dask.runtime import configure_logging

    configure_logging(verbose)


def _verbose(argv: list[str]) -> bool:
    """Whether the group's ``-v``/``--verbose`` option is among the arguments."""
    return any(a == "--verbose" or (a.startswith("-v") and set(a[1:]) == {"v"}) for a in argv)


def error_line(exc: BaseException) -> str:
    """The one ``error:`` line for a failure: a library error's message, otherwise the exception's type
    and message (an input a parser could not read, a full disk ...); newlines are folded."""
    from vollseg_dask.errors import VollSegError

    msg = str(exc) if isinstance(exc, VollSegError) else f"{type(exc).__name__}: {exc}"
    return "error: " + "; ".join(part.strip() for part in msg.splitlines() if part.strip())


def run(argv: list[str] | None = None) -> None:
    """Entry point: any failure becomes one ``error:`` line on stderr and exit status 2.

    The traceback is printed only with ``-v``. Click's own usage errors keep their message and
    status 2; Ctrl-C exits with 130.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        main(args=args, standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except BaseException as exc:  # noqa: BLE001 - the command line's last line of defence
        if _verbose(args):
            import traceback

            traceback.print_exc()
        try:
            click.echo(error_line(exc) + ("" if _verbose(args) else "  (-v shows the traceback)"), err=True)
        except BaseException:  # noqa: BLE001 - stderr itself failed: the exit status still says it
            pass
        sys.exit(2)
