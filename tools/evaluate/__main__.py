"""python -m tools.evaluate: the model evaluation of `tools.evaluate.auroc`."""

from tools.evaluate.auroc import main

main()
