"""python -m tools.train: the training run of `tools.train.train`."""

from tools.train.train import main

main()
