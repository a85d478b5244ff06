"""``python -m ldmctl`` (and ``torchrun ... -m ldmctl``): the same CLI as the ``ldmctl`` script."""

from ldmctl.cli import main

if __name__ == "__main__":
    main()
