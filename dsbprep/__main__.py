"""``python -m dsbprep COMMAND ...``: the ``dsbprep`` command (:mod:`dsbprep.cli`)."""

from .cli import console

if __name__ == "__main__":
    console()
