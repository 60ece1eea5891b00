"""Command line of the `iis` tool."""

import click

from iis import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="iis")
def main() -> None:
    """Inherent Interpretability Score of a representation (Shen et al., ICLR 2025).

    The method's commands arrive with its own issue; the shared data commands
    live in `medimg` (see `medimg --help`).
    """


if __name__ == "__main__":
    main()
