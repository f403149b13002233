"""`python -m anger_stream`: the `anger-stream` command."""

from .cli import main

main()
