"""`python -m facecrm` runs the command line."""

from facecrm.cli import app

app(prog_name="facecrm")
