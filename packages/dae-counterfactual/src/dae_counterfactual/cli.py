"""Command line of the `dae-cf` tool."""

import click

from dae_counterfactual import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dae-cf")
def main() -> None:
    """Diffusion-autoencoder counterfactuals for classification and ordinal grading (Atad et al., MELBA 2024).

    The method's commands arrive with its own issue; the shared data commands
    live in `medimg` (see `medimg --help`).
    """


if __name__ == "__main__":
    main()
