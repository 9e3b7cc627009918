"""Build tools that write project files from sources or results: run as `python -m tools.<name>`."""
