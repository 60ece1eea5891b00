"""Command line of the `crl` tool."""

import click

from crl import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crl")
def main() -> None:
    """Concept Rule Learner: images to binary concepts to Boolean rules (Gao et al., MICCAI 2025).

    The method's commands arrive with its own issue; the shared data commands
    live in `medimg` (see `medimg --help`).
    """


if __name__ == "__main__":
    main()
