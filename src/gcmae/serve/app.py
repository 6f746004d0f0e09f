"""The ASGI app of `gcmae serve` (Starlette): pages, JSON about the job, DZI tiles and overlay images.

Every file served is looked up, never built from the URL: static files from a list made at start-up, job files
through the :class:`JobIndex` entry of a known slide id (and only when they lie inside the job folder), slide
files only as recorded by that slide's ``coords.h5``. Anything else is a 404. Nothing is written.
"""
from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gcmae.serve.job import JobIndex, Overlay, SlideEntry
from gcmae.serve.overlays import OverlayError, Scores, colour_stops, layout, read_scores, score_png, top_tiles
from gcmae.serve.tiles import DeepZoomSource, LRUCache, TileNotFound

STATIC = Path(__file__).parent / "static"
TOP_K = 10
HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
# names a browser uses for this machine; any other Host header is refused (400), so a web page that rebinds its
# own domain name to 127.0.0.1 (DNS rebinding) cannot read the slides through the user's browser
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
# what a slide file that changed, vanished or cannot be decoded raises while a tile is made
SLIDE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


def static_files(root: Path = STATIC) -> dict[str, Path]:
    """url path under /static/ -> file, for every regular file under `root` (symlinks are not followed)."""
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


class Server:
    """The routes' state: the job index, the tile source and the caches of one served job."""

    def __init__(self, job_dir: str | Path, cache_tiles: int = 4096) -> None:
        self.index = JobIndex(job_dir)
        self.tiles = DeepZoomSource(cache_tiles)
        self.static = static_files()
        self._scores = LRUCache(256)  # (csv path, mtime, column) -> Scores (the cache stores any object)
        self._images = LRUCache(256)  # (what, path, mtime) -> PNG bytes

    # -- lookups (404 for anything unknown) --
    def entry(self, slide_id: str) -> SlideEntry:
        entry = self.index.slides().get(slide_id)
        if entry is None:
            raise HTTPException(404, f"no slide {slide_id!r} in this job")
        return entry

    def tiled(self, slide_id: str) -> SlideEntry:
        entry = self.entry(slide_id)
        if entry.tiles is None:
            raise HTTPException(404, f"slide {slide_id!r} is not tiled (yet)")
        return entry

    def slide_file(self, slide_id: str) -> Path:
        """The slide file recorded by the slide's coords.h5 (looked up without scanning the job)."""
        tiles = self.index.tiles(slide_id)
        if tiles is None:
            raise HTTPException(404, f"no tiled slide {slide_id!r} in this job")
        if not tiles.slide_path.is_file():
            raise HTTPException(404, f"slide file of {slide_id!r} not found: {tiles.slide_path}")
        return tiles.slide_path

    def overlay(self, entry: SlideEntry, overlay_id: str) -> Overlay:
        for o in entry.overlays:
            if o.id == overlay_id:
                return o
        raise HTTPException(404, f"slide {entry.id!r} has no overlay {overlay_id!r}")

    def scores(self, o: Overlay) -> Scores:
        key = (o.csv, _mtime(o.csv), o.column)
        hit = self._scores.get(key)
        if hit is None:
            hit = read_scores(o.csv, o.column, o.kind)
            self._scores.put(key, hit)
        return hit  # type: ignore[return-value]

    def detail(self, entry: SlideEntry) -> dict[str, Any]:
        """What the slide page needs: geometry, MPP, layers with their colour bars, top tiles."""
        out = entry.summary()
        t = entry.tiles
        out["viewable"] = bool(t is not None and t.slide_path.is_file())
        if t is None:
            return out
        g = t.grid
        out["grid"] = {"step": g.step, "extent": g.extent, "tile_size": g.tile_size, "mpp": g.mpp,
                       "n_cols": g.n_cols, "n_rows": g.n_rows}
        out["layout"] = layout(t)
        out["tissue"] = self.index.tissue(entry) is not None
        layers = []
        for o in entry.overlays:
            layer: dict[str, Any] = {"id": o.id, "kind": o.kind, "label": o.label, "colours": colour_stops(o.kind)}
            try:
                s = self.scores(o)
                layer.update(scale=s.label, num_tiles=len(s.raw), top=top_tiles(t, s, TOP_K))
            except OverlayError as err:
                layer["error"] = str(err)
            layers.append(layer)
        out["layers"] = layers
        return out

    def image(self, what: str, path: Path, make: Any) -> Response:
        key = (what, path, _mtime(path))
        data = self._images.get(key)
        if data is None:
            try:
                data = make()
            except OverlayError as err:
                raise HTTPException(404, str(err)) from err
            self._images.put(key, data)
        return Response(data, media_type="image/png", headers={**HEADERS, "Cache-Control": "no-cache"})


def _mtime(path: Path) -> int:
    """The file's modification time (a cache key part); 404 when it went away (a job still being written)."""
    try:
        return path.stat().st_mtime_ns
    except OSError as err:
        raise HTTPException(404, f"{path.name} is gone") from err


def _file(path: Path | None, media_type: str | None = None) -> FileResponse:
    if path is None:
        raise HTTPException(404, "not found")
    return FileResponse(path, media_type=media_type or mimetypes.guess_type(path.name)[0], headers=HEADERS)


def create_app(job_dir: str | Path, cache_tiles: int = 4096, allowed_hosts: tuple[str, ...] = LOCAL_HOSTS) -> Starlette:
    """The app serving `job_dir` (a tiling / extraction / diagnosis job folder, or a `gcmae diagnose` output) to
    requests whose Host header is one of `allowed_hosts` ("*" accepts any)."""
    srv = Server(job_dir, cache_tiles)

    def page(name: str) -> FileResponse:
        return _file(srv.static[name], "text/html; charset=utf-8")

    def index(request: Request) -> Response:
        return page("index.html")

    def slide_page(request: Request) -> Response:
        srv.entry(request.path_params["slide_id"])
        return page("slide.html")

    def static(request: Request) -> Response:
        return _file(srv.static.get(request.path_params["path"]))

    def api_job(request: Request) -> Response:
        slides = srv.index.slides()
        return JSONResponse({"job": srv.index.root.name, "slides": [e.summary() for e in slides.values()]},
                            headers=HEADERS)

    def api_slide(request: Request) -> Response:
        return JSONResponse(srv.detail(srv.entry(request.path_params["slide_id"])), headers=HEADERS)

    def thumbnail(request: Request) -> Response:
        return _file(srv.index.thumbnail(srv.entry(request.path_params["slide_id"])), "image/png")

    def tissue(request: Request) -> Response:
        return _file(srv.index.tissue(srv.entry(request.path_params["slide_id"])), "application/geo+json")

    def grid(request: Request) -> Response:
        t = srv.tiled(request.path_params["slide_id"]).tiles
        return JSONResponse({"size": t.grid.extent, "coords": t.coords.tolist()}, headers=HEADERS)  # type: ignore

    def overlay(request: Request) -> Response:
        entry = srv.tiled(request.path_params["slide_id"])
        o = srv.overlay(entry, request.path_params["overlay_id"])
        return srv.image(o.id, o.csv, lambda: score_png(entry.tiles, srv.scores(o), o.kind))  # type: ignore[arg-type]

    def dzi(request: Request) -> Response:
        path = srv.slide_file(request.path_params["slide_id"])
        try:
            xml = srv.tiles.dzi(path)
        except SLIDE_ERRORS as err:
            raise HTTPException(404, f"cannot read the slide of {request.path_params['slide_id']!r}: {err}") from err
        return Response(xml, media_type="application/xml", headers=HEADERS)

    def dzi_tile(request: Request) -> Response:
        p = request.path_params
        path = srv.slide_file(p["slide_id"])
        try:
            data = srv.tiles.tile(path, p["level"], p["col"], p["row"])
        except TileNotFound as err:
            raise HTTPException(404, str(err)) from err
        except SLIDE_ERRORS as err:
            raise HTTPException(404, f"cannot read the slide of {p['slide_id']!r}: {err}") from err
        return Response(data, media_type="image/jpeg", headers={**HEADERS, "Cache-Control": "max-age=3600"})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        detail = exc.detail if isinstance(exc, HTTPException) else "not found"
        return PlainTextResponse(str(detail), status_code=status, headers=HEADERS)

    routes = [
        Route("/", index), Route("/slide/{slide_id}", slide_page), Route("/static/{path:path}", static),
        Route("/api/slides", api_job), Route("/api/slides/{slide_id}", api_slide),
        Route("/api/slides/{slide_id}/thumbnail.png", thumbnail),
        Route("/api/slides/{slide_id}/tissue.geojson", tissue),
        Route("/api/slides/{slide_id}/tiles.json", grid),
        Route("/api/slides/{slide_id}/overlays/{overlay_id}.png", overlay),
        Route("/dzi/{slide_id}.dzi", dzi),
        Route("/dzi/{slide_id}_files/{level:int}/{col:int}_{row:int}.jpeg", dzi_tile),
    ]
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        srv.tiles.close()

    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found}, lifespan=lifespan,
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))])
    app.router.redirect_slashes = False  # no redirects to guessed paths: a path is a route or a 404
    app.state.server = srv
    return app

