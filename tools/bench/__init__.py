"""The benchmark: one command, one sub-report per question, every figure measured in the run that prints it.

    python -m tools.bench runtime [--model M] [--int8 M8] [--speech MANIFEST ...] [--quick] [--out docs/benchmarks]
    python -m tools.bench streams [--against REV] [--model M] [--int8 M8] [--quick] [--out docs/benchmarks-streams]
    python -m tools.bench batch [--data FOLDER] [--files 200] [--model M] [--repeat 3]
    python -m tools.bench dashboard --file CALL [--calls 300] [--duration 20] [--rounds 2] [--json OUT.jsonl]
    python -m tools.bench window --model NAME=M.onnx --model NAME2=M2.onnx [--seconds 30] [--out OUT.json]

`runtime` writes docs/benchmarks.md and .json: latency, throughput against the machine's matmul peak,
offline scoring, CLI cold start and memory, StreamSet capacity and the optimisations table. Its speech is
the test split of the `--speech` manifests (default: EmoDB and RAVDESS in the shared data folder, found
beside the repository or at $ANGER_SHARED). `streams` writes docs/benchmarks-streams.md and .json: the
many-stream core's Python-side cost per stream and cycle, streams sustained, cores used, the model's share
of the CPU time and the ratio to the bare model's throughput, optionally beside an older revision's core.
`batch` prints a Markdown table of `anger-stream batch` throughput for docs/batch.md. The serve load test
is `python -m tools.loadtest` (docs/telephony.md); `dashboard` runs it with and without `serve --metrics`
and `--dashboard` and a page open (docs/operations.md). `window` times one window of several models side by
side on one thread (the model card's compute budget; docs/window-latency.json).

Modules: `timing` (measurements and statistics), `peak` (matmul peaks), `onnxgraph` (FLOPs and the network
read from the ONNX graph), `e2e` (offline, CLI, StreamSet sections), `optimisations` (before/after rows),
`report` (the Markdown), `runtime`, `streams`, `batch`, `dashboard` and `window` (the sub-reports).
"""
