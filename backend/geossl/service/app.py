"""HTTP routes of the GeoSSL service: thin adapters onto the job manager, the store and the registry.

Errors: a ``GeoSSLError`` (the user's input) is a 422 with its message as ``detail``; an unknown
job or model 404; a request that does not fit a job's state 409; anything else a 500 whose
traceback goes to the service log, never to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel

from .. import __version__
from ..errors import GeoSSLError
from .auth import TokenAuth
from .device import device_status
from .jobs import Conflict, JobManager, JobType, NotFound
from .registry import ModelRegistry
from .store import FINISHED, STATES, plain

log = logging.getLogger("geossl.service")

KEEPALIVE_S = 15.0


def create_app(manager: JobManager, registry: ModelRegistry, token: str,
               on_shutdown: Sequence[Callable[[], None]] = ()) -> FastAPI:
    """The app; the manager starts with it and stops (jobs interrupted, resumable) when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        manager.start()
        yield
        manager.draining = True
        await asyncio.to_thread(manager.shutdown)
        for hook in on_shutdown:
            await asyncio.to_thread(hook)

    app = FastAPI(title="GeoSSL backend service", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=lifespan,
                  description="Local job server of GeoSSL. Every route but /health needs "
                              "'Authorization: Bearer <token>'.")
    app.add_middleware(TokenAuth, token=token)

    @app.exception_handler(GeoSSLError)
    async def _user_error(_request: Request, exc: GeoSSLError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "problem": exc.problem, "fix": exc.fix}, status_code=422)

    @app.exception_handler(NotFound)
    async def _not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    async def _conflict(_request: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "Internal error in the GeoSSL service; the details are in its log file."},
                            status_code=500)

    # --- service ---------------------------------------------------------------------------------

    def finetune_defaults() -> dict[str, Any]:
        """The recipe a fine-tune gets when a front end sends only rasters, polygons and a class field."""
        from ..schemas import FinetuneParams

        p = FinetuneParams(rasters=["-"], labels="-", class_field="-", out="-")
        return p.model_dump(exclude={"rasters", "labels", "class_field", "out", "layer", "colours"})

    @app.get("/health", summary="Liveness, version and device (no token needed)")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "device": device_status()}

    @app.get("/info", summary="Capabilities: methods, encoders, job types and their JSON schemas")
    def info() -> dict[str, Any]:
        from ..checkpoint import versions
        from ..methods import method_names
        from ..schemas import ENCODERS

        return {
            "version": __version__, "versions": versions(), "methods": method_names(), "encoders": list(ENCODERS),
            "job_types": {t.name: {"gpu_queue": t.gpu, "resume": t.resume, "schema": t.params.model_json_schema()}
                          for t in manager.types.values()},
            "max_jobs": manager.max_jobs, "max_cpu_jobs": manager.max_cpu_jobs,
            "predict_processes": manager.predict_processes, "states": list(STATES),
            "device": device_status(), "finetune_defaults": finetune_defaults(),
        }

    @app.get("/pretraining/gain", summary="What pretraining bought in our measurements, for a method and budget")
    def pretraining_gain(method: str = Query(max_length=100),
                         minutes: float | None = Query(None, gt=0, le=7 * 24 * 60),
                         steps: int | None = Query(None, ge=1, le=10**9),
                         bands: int | None = Query(None, ge=1, le=10_000)) -> dict[str, Any]:
        """The measured gain (pretrained − random init Kappa) at the nearest measured budget at or below
        the chosen one, on the measured imagery closest to ``bands`` (geossl.pretraining_gain)."""
        from ..pretraining_gain import estimate_gain, load_gain_table

        if (minutes is None) == (steps is None):
            raise GeoSSLError("Give the pretraining budget as minutes or as steps.", "add ?minutes=30 or ?steps=1000.")
        return estimate_gain(load_gain_table(), method, minutes=minutes, steps=steps, bands=bands)

    # --- jobs ------------------------------------------------------------------------------------

    @app.get("/jobs", summary="Jobs, newest first")
    def list_jobs(state: str | None = None, job_type: str | None = Query(None, alias="type"),
                  limit: int = Query(200, ge=1, le=10_000)) -> dict[str, Any]:
        jobs = manager.store.list(states=[state] if state else None, types=[job_type] if job_type else None,
                                  limit=limit)
        return {"jobs": [manager.present(j) for j in jobs]}

    for jt in manager.types.values():
        app.add_api_route(f"/jobs/{jt.name}", _submit_route(manager, jt), methods=["POST"], status_code=201,
                          summary=f"Submit a {jt.name} job (body: {jt.params.__name__})", tags=["jobs"])

    @app.get("/jobs/{job_id}", summary="One job: state, progress (step, loss, metrics, ETA), result, log tail")
    def get_job(job_id: str) -> dict[str, Any]:
        return manager.view(job_id, log_tail=50)

    @app.delete("/jobs/{job_id}", status_code=204, summary="Forget a finished job (its files stay)")
    def delete_job(job_id: str) -> Response:
        manager.delete(job_id)
        return Response(status_code=204)

    @app.post("/jobs/{job_id}/cancel", summary="Cancel: stop the worker, remove the job's outputs")
    def cancel_job(job_id: str) -> dict[str, Any]:
        return manager.cancel(job_id)

    @app.post("/jobs/{job_id}/resume", summary="Run an interrupted or failed job again")
    def resume_job(job_id: str) -> dict[str, Any]:
        return manager.resume(job_id)

    @app.get("/jobs/{job_id}/log", summary="Log lines after sequence number 'since'")
    def job_log(job_id: str, since: int = 0) -> dict[str, Any]:
        manager.view(job_id)
        lines = manager.store.logs(job_id, since)
        return {"job_id": job_id, "lines": lines, "next": lines[-1]["seq"] if lines else since}

    @app.get("/jobs/{job_id}/losses", summary="Loss history as [step, loss] pairs")
    def job_losses(job_id: str) -> dict[str, Any]:
        job = manager.view(job_id)
        return {"job_id": job_id, "state": job["state"], "losses": manager.store.losses(job_id)}

    @app.get("/jobs/{job_id}/events", summary="Server-Sent Events: job, progress, log, state, end")
    async def job_events(job_id: str) -> StreamingResponse:
        await run_in_threadpool(manager.view, job_id)  # 404 before the stream starts
        return StreamingResponse(_event_stream(manager, job_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- models ----------------------------------------------------------------------------------

    @app.get("/models", summary="Model files written by jobs or placed in <data-dir>/models, with metadata")
    def list_models() -> dict[str, Any]:
        return {"models": registry.list()}

    @app.get("/models/{model_id}", summary="One model's metadata")
    def get_model(model_id: str) -> dict[str, Any]:
        return registry.find(model_id)

    @app.get("/models/{model_id}/file", summary="Download the model file")
    def model_file(model_id: str) -> FileResponse:
        model = registry.find(model_id)
        return FileResponse(model["path"], filename=model["name"], media_type="application/octet-stream")

    @app.delete("/models/{model_id}", status_code=204, summary="Delete a model file")
    def delete_model(model_id: str) -> Response:
        registry.delete(model_id, manager.model_in_use)
        return Response(status_code=204)

    return app


def _submit_route(manager: JobManager, jt: JobType) -> Callable[..., dict[str, Any]]:
    """A POST handler whose body is exactly ``jt.params`` (so OpenAPI shows the schemas.py model)."""

    def submit(params: BaseModel) -> dict[str, Any]:
        return manager.submit(jt.name, params)

    submit.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=jt.params)])
    submit.__name__ = f"submit_{jt.name}"
    return submit


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(plain(data), separators=(',', ':'))}\n\n"


async def _event_stream(manager: JobManager, job_id: str) -> AsyncIterator[str]:
    """``job`` (snapshot) first, then live ``progress``/``log``/``state`` events, ``end`` last."""
    queue = manager.hub.subscribe(job_id)  # before the snapshot: no event falls in between
    try:
        job = await run_in_threadpool(manager.view, job_id, 50)
        yield _sse("job", job)
        if job["state"] in FINISHED:
            yield _sse("end", job)
            return
        idle = 0.0
        while not manager.draining:
            try:
                event, data = await asyncio.wait_for(queue.get(), timeout=1.0)
            except asyncio.TimeoutError:
                idle += 1.0
                if idle >= KEEPALIVE_S:
                    idle = 0.0
                    yield ": keep-alive\n\n"
                continue
            idle = 0.0
            yield _sse(event, data)
            if event == "end":
                return
        yield _sse("closing", {"detail": "The service is stopping; running jobs become interrupted (resumable)."})
    finally:
        manager.hub.unsubscribe(job_id, queue)
