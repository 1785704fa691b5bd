"""``doc2lora ingest --ray``: internalise over Ray workers, keep this process the only writer.

Each worker is a Ray actor that loads the engine once and turns batches of texts into
adapters; it never touches the store. The driver (the ``doc2lora`` process) scans the files,
sends texts out, and commits every returned adapter itself, exactly as a local ingest does.
So the store keeps its one-writer rule and its crash safety whatever happens to a worker,
and the workers need the package and the model, but neither the files nor the store.

Adapters come back as tensors through Ray's own object transport (bf16, the precision they
are stored in). Nothing here writes pickles to disk or reads them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from doc2lora_rag.cli.engine_spec import EngineSpec
from doc2lora_rag.cli.errors import EXIT_USAGE, CommandError
from doc2lora_rag.cli.ingest_build import Built, EngineIdentity, internalize_batch
from doc2lora_rag.errors import Doc2LoRAError

BATCHES_IN_FLIGHT = 2
"""Batches queued per worker: one running, one waiting, so a worker never idles on the driver."""

RETRIES = 1
"""A batch whose worker died is tried once more elsewhere before its documents are failed."""


class RayIngestError(Doc2LoRAError):
    """The Ray workers could not start, or disagree about the model they loaded."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise CommandError("--ray needs Ray: pip install 'doc2lora-rag[ray]'", EXIT_USAGE) from None
    return ray


class IngestWorker:
    """Runs inside a Ray actor: one engine per worker, loaded when the actor starts."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = EngineSpec.from_dict(spec)
        self.warnings: list[str] = []
        self.engine = self.spec.load(self.warnings.append)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def describe(self) -> dict[str, Any]:
        return {
            "identity": dataclasses.asdict(EngineIdentity.of(self.engine)),
            "untrained": self.spec.untrained(self.engine),
            "warnings": self.warnings,
            "name": self.name,
        }

    def internalize(self, texts: list[str]) -> tuple[list[Built], str]:
        import torch

        built = internalize_batch(self.engine, texts)
        for item in built:
            if item.adapter is not None:
                item.adapter = item.adapter.to("cpu", torch.bfloat16)
        return built, self.name


class RayBuilder:
    """A pool of ``workers`` actors (``worker_cpus``/``worker_gpus`` each) on the Ray cluster at
    ``address`` (None: ``RAY_ADDRESS`` or a running cluster, else a new local one)."""

    def __init__(
        self,
        spec: EngineSpec,
        *,
        address: str | None,
        workers: int,
        worker_cpus: float,
        worker_gpus: float,
        warn: Callable[[str], None],
    ):
        self.ray = import_ray()
        self.owns_ray = not self.ray.is_initialized()
        if self.owns_ray:
            self.ray.init(address=address, include_dashboard=False, log_to_driver=False)
        remote = self.ray.remote(num_cpus=worker_cpus, num_gpus=worker_gpus)(IngestWorker)
        threads = spec.threads or max(1, int(worker_cpus))
        settings = dataclasses.replace(spec, threads=threads).to_dict()
        self.actors = [remote.remote(settings) for _ in range(max(1, workers))]
        try:
            infos = self.ray.get([actor.describe.remote() for actor in self.actors])
        except self.ray.exceptions.RayError as error:
            self.close()
            raise RayIngestError(f"a Ray worker could not load the engine: {_last_line(error)}") from None
        identities = {tuple(sorted(info["identity"].items())) for info in infos}
        if len(identities) > 1:
            self.close()
            raise RayIngestError(
                "Ray workers loaded different models; give --base-model/--hypernet paths that hold "
                "the same files on every node"
            )
        self.identity = EngineIdentity(**infos[0]["identity"])
        self.untrained = bool(infos[0]["untrained"])
        for message in infos[0]["warnings"]:
            warn(message)

    def run(self, batches: Sequence[Sequence[str]]) -> Iterator[tuple[int, list[Built], str]]:
        queue = deque((index, 0) for index in range(len(batches)))
        running: dict[Any, tuple[int, int, Any]] = {}  # result ref -> (batch, attempt, actor)

        def feed(actor: Any) -> None:
            while queue and sum(1 for *_, a in running.values() if a is actor) < BATCHES_IN_FLIGHT:
                index, attempt = queue.popleft()
                running[actor.internalize.remote(list(batches[index]))] = (index, attempt, actor)

        for actor in self.actors:
            feed(actor)
        while running:
            (ref,), _ = self.ray.wait(list(running), num_returns=1)
            index, attempt, actor = running.pop(ref)
            try:
                built, name = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as error:
                self._drop(actor)
                if attempt < RETRIES and self.actors:
                    queue.append((index, attempt + 1))
                else:
                    reason = f"the Ray worker died: {_last_line(error)}"
                    yield index, [Built(None, reason, 0) for _ in batches[index]], "lost"
            except self.ray.exceptions.RayError as error:
                yield index, [Built(None, f"Ray task failed: {_last_line(error)}", 0) for _ in batches[index]], "lost"
            else:
                yield index, built, name
            for worker in list(self.actors):
                feed(worker)
            if not self.actors and queue:
                while queue:
                    index, _ = queue.popleft()
                    yield index, [Built(None, "no Ray workers left", 0) for _ in batches[index]], "lost"

    def _drop(self, actor: Any) -> None:
        if actor in self.actors:
            self.actors.remove(actor)

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone: nothing left to release
                self.ray.kill(actor)
        self.actors = []
        if self.owns_ray and self.ray.is_initialized():
            self.ray.shutdown()


def _last_line(error: BaseException) -> str:
    """Ray wraps a worker's exception in a traceback; its last line is the readable part."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
