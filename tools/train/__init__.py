"""Training: the network, its data, the training run, ONNX export and int8 quantisation (PyTorch only here).

    python -m tools.train --manifest MANIFEST ... --variant T3 --steps N --out runs/NAME
    python -m tools.train.voice --checkpoint runs/NAME/best.pt --manifest MANIFEST ... --dev MANIFEST --out V.pt
    python -m tools.train.export --checkpoint runs/NAME/best.pt --out models/anger_fcn.onnx
    python -m tools.train.quantize --manifest MANIFEST ... [--evaluate --dev MANIFEST]
    python -m tools.train.window_cues --manifest MANIFEST ... [--model M.onnx ...]

`fcn` is the network and its variants, `data` the crops, augmentation and balanced batches, `teacher` the
optional YAMNet teacher, `prosody` the optional eGeMAPS-style prosodic targets, `train` the run
(`python -m tools.train`), `voice` the raised-voice term of a teacher-trained network, `export` the ONNX
graph with its metadata, `quantize` the int8 model gated on AUROC (`tools.evaluate`), `window_cues` the
AUROC of simple cues in the corpora's windows. Corpus manifests
and splits are `tools.manifest`, the recording channels `tools.channels` (both shared with evaluation).
`make model` runs the shipped recipe; docs/model-training.md has the runs behind it.
"""
