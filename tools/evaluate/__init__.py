"""Evaluation: how well a model ranks angry windows of held-out speakers, on the windows the runtime scores.

    python -m tools.evaluate --model M.onnx --manifest MANIFEST ... --json out.json [--telephone] [--compare M2]
    python -m tools.evaluate.robustness --model M.onnx --manifest MANIFEST ... --json out.json
    python -m tools.evaluate.egemaps --manifest MANIFEST ... --json out.json [--model M.onnx]
    python -m tools.evaluate.false_alarms --model M.onnx --json docs/false-alarms.json [--data DIR] [--cache DIR]

`scoring` cuts, gates and scores a corpus's windows as the runtime does; `auroc` turns scores into window
and utterance AUROC with DeLong CIs, thresholds and ROC plots (the `python -m tools.evaluate` command);
`robustness` repeats that through the recording channels of `tools.channels`; `egemaps` is the
openSMILE baseline; `false_alarms` builds synthetic calls (`calls`) and measures false alarms per hour of
calm speech and angry passages caught for a grid of event rules, choosing the detector's defaults.
docs/evaluation.md has
the details and the commands behind every file in models/eval.
"""
