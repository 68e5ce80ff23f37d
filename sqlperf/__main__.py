"""``python -m sqlperf``: the same as the ``sqlperf`` command."""

from sqlperf.cli import main

if __name__ == "__main__":
    main()
