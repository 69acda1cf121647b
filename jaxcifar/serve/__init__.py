"""Serve a trained run over HTTP: `python -m jaxcifar.serve --workdir W` (needs the `serve` extra).

    model.py     what is served: `uint8 images -> logits` (Run.logits or an exported artefact),
                 class names, provenance, metadata
    batching.py  dynamic batching: concurrent requests grouped into one batch; the compiled
                 batch sizes and their warm-up
    protocol.py  request parsing and response building (pure functions)
    metrics.py   the Prometheus metrics, in one registry per app
    app.py       the FastAPI app: Open Inference Protocol (KServe v2), /v1/predict, /metrics, /
    __main__.py  the command line: load, build the app, run uvicorn
"""
