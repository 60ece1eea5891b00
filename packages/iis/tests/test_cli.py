from click.testing import CliRunner

import iis
from iis.cli import main


def test_help_and_version():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert iis.__version__ in result.output


def test_depends_on_core():
    import medimg_core

    assert medimg_core.__version__
