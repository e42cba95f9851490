"""`python -m peftqa ...`: the `peftqa` command (peftqa.cli.main), for when its console script is not on PATH."""
from peftqa.cli import main

if __name__ == "__main__":
    main()
