"""Command line of the `neuron-concepts` tool."""

import click

from neuron_concepts import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="neuron-concepts")
def main() -> None:
    """Concepts from Neurons: sparse-autoencoder concepts of an opaque model, selected into a concept bottleneck (Gong et al., IPMI 2025).

    The method's commands arrive with its own issue; the shared data commands
    live in `medimg` (see `medimg --help`).
    """


if __name__ == "__main__":
    main()
