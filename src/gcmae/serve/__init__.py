"""`gcmae serve`: a local web viewer of a job folder (slides in deep zoom, tissue, tiles, heatmaps, attention).

The top layer, beside the CLI: it reads what `gcmae.slide` wrote and nothing in the package imports it.
`app.py` (routes), `job.py` (reads the job folder), `tiles.py` (DZI tiles, LRU), `overlays.py` (layers as PNG),
`commands.py` (the subcommand), `static/` (the page, and OpenSeadragon, vendored).
"""
