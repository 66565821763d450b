"""`python -m starcli …` (and `torchrun -m starcli train …`)."""

from starcli.cli import main

if __name__ == "__main__":
    main()
