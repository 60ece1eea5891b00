"""Command line of the `cipl` tool."""

import click

from cipl import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cipl")
def main() -> None:
    """Cross- and Intra-image Prototypical Learning for multi-label diagnosis (Wang et al., IEEE TMI 2025).

    The method's commands arrive with its own issue; the shared data commands
    live in `medimg` (see `medimg --help`).
    """


if __name__ == "__main__":
    main()
