"""The stage graph: keyed, cached, atomic stages and the run.json lineage.

A stage is a plain function `(inputs, ctx, workdir) -> StageOutput`. Its key is the sha256 of
its name, the config subset it declares, the edgekd version and its inputs' keys; when the stage
folder already holds a `result.json` with that key and every output file still has the recorded
sha256, the stage is reused. Otherwise the stage runs in `.NAME.tmp-PID/` and is renamed into
place only when it finished, so a killed build never leaves a half stage that looks done.

Under torchrun (the caller sets rank, world and `comm`, the collectives of edgekd.dist) rank 0 owns the
folder: it decides reuse, publishes every stage and writes run.json; a `parallel` stage's function runs on
every rank (sharded generation, DDP/FSDP training), any other stage's on rank 0 while the others wait. The
ranks agree after each step, so a failure anywhere is raised on every rank and nothing half-done is published.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

from edgekd import __version__
from edgekd.errors import EdgekdError, StageError, UserError
from edgekd.fsio import (BuildLock, clean_dead_leftovers, publish_dir_atomic, read_result, sha256_file,
                         write_bytes_atomic, write_json_atomic)
from edgekd.lineage import run_problem

RESULT_SCHEMA_VERSION = 1
RUN_SCHEMA_VERSION = 1


@dataclass
class BuildContext:
    out: Path
    recipe: Any  # RecipeConfig
    target: Any  # TargetConfig
    recipe_ref: str
    target_ref: str
    overrides: dict[str, Any] = field(default_factory=dict)
    quick: bool = False
    console: Any = None
    progress: Any = None
    options: dict[str, Any] = field(default_factory=dict)  # allow_unsupported, strict, ...
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    recipe_file: Path | None = None  # the card as the user wrote it: copied to BUILD/recipe.yaml
    # This process under torchrun (RANK, WORLD_SIZE), set by the caller: the engine knows no launcher.
    # Only rank 0 publishes stages and writes run.json; (0, 1) is a single process.
    rank: int = 0
    world: int = 1
    # The collectives of a multi-process build (edgekd.dist, handed in by the caller): agree(error),
    # broadcast(obj). Used only when world > 1.
    comm: Any = None
    _memo: dict[str, Any] = field(default_factory=dict)

    def log(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg)

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        """Per-build memo for expensive shared objects (the loaded dataset)."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def for_stage(self, stage: "Stage") -> "BuildContext":
        """This context as `stage` sees it: the recipe and target cut to the sections in
        `stage.reads` (shared memo, console and progress)."""
        import dataclasses

        tree = reads_tree(stage.reads)
        return dataclasses.replace(
            self, recipe=_view(self.recipe, tree.get("recipe"), f"stage '{stage.name}': recipe", top=True),
            target=_view(self.target, tree.get("target"), f"stage '{stage.name}': target", top=True))


# Card fields any stage may read: the card's identity, not settings that change what a stage makes.
_IDENTITY = frozenset({"schema_version", "name", "description", "task"})


def reads_tree(reads: tuple[str, ...]) -> dict[str, Any]:
    """("recipe.distill.tasks", "target") -> {"recipe": {"distill": {"tasks": True}}, "target": True}."""
    tree: dict[str, Any] = {}
    for path in reads:
        node = tree
        parts = path.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is True:
                break
            node = node.setdefault(part, {})
        else:
            node[parts[-1]] = True
    return tree


def _view(card: Any, node: Any, where: str, top: bool = False) -> Any:
    return card if node is True or card is None else CardView(card, node or {}, where, top)


class CardView:
    """A card (or one of its sections) as a stage sees it: only the fields its cache key covers.
    Reading any other field is a bug in the stage's declaration, and fails loudly instead of
    letting the cache key and the stage's behaviour drift apart. `top`: a whole card, whose
    identity fields (name, task, ...) any stage may read; a section's view has none."""

    __slots__ = ("_card", "_node", "_where", "_top")

    def __init__(self, card: Any, node: dict[str, Any], where: str, top: bool = False) -> None:
        object.__setattr__(self, "_card", card)
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_where", where)
        object.__setattr__(self, "_top", top)

    def __getattr__(self, name: str) -> Any:
        node = self._node.get(name)
        if node is None and name in _IDENTITY and self._top:
            return getattr(self._card, name)
        if node is None:
            raise StageError(f"{self._where} read '{name}', which is not part of the stage's cache key",
                             hint="declare it in the stage's `reads` (edgekd/tasks/): this is a bug in edgekd")
        return _view(getattr(self._card, name), node, f"{self._where}.{name}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise StageError(f"{self._where}: a stage may not change its cards", hint="this is a bug in edgekd")


def card_slice(ctx: BuildContext, reads: tuple[str, ...]) -> dict[str, Any]:
    """The JSON form of the card sections a stage reads: what its cache key hashes."""

    def dump(value: Any) -> Any:
        return value.model_dump(mode="json") if hasattr(value, "model_dump") else value

    out: dict[str, Any] = {}
    for path in sorted(reads):
        value: Any = {"recipe": ctx.recipe, "target": ctx.target}[path.split(".")[0]]
        for part in path.split(".")[1:]:
            value = getattr(value, part)
        out[path] = dump(value)
    return out


@dataclass
class StageOutput:
    outputs: dict[str, str] = field(default_factory=dict)  # name -> path relative to the stage folder
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageResult:
    name: str
    key: str
    dir: Path
    outputs: dict[str, str]
    metrics: dict[str, Any]
    reused: bool = False
    seconds: float = 0.0
    sha256: dict[str, str] = field(default_factory=dict)

    def path(self, output: str) -> Path:
        try:
            return self.dir / self.outputs[output]
        except KeyError:
            raise StageError(f"stage '{self.name}' has no output '{output}'", hint="rebuild without --reuse") from None


@dataclass
class Stage:
    name: str
    fn: Callable[[dict[str, StageResult], BuildContext, Path], StageOutput]
    deps: list[str]
    config: Callable[[BuildContext], Any]  # derived key material (data hashes, file hashes), JSON-able;
    #                                        also where the stage's settings are validated up front
    when: Callable[[BuildContext], bool] = lambda ctx: True
    # The card sections the stage reads ("recipe.distill", "target.onnx", "target"): their typed
    # values are what its cache key hashes, and the stage sees only these (BuildContext.for_stage).
    reads: tuple[str, ...] = ()
    # Under torchrun: True when every rank runs the stage function (teacher generation sharded by rank,
    # DDP/FSDP distillation) and rank 0 publishes its folder; False when rank 0 runs it alone and the
    # others wait, then read the published result.
    parallel: bool = False


def default_cache_dir() -> Path:
    return Path(os.environ.get("EDGEKD_CACHE") or Path.home() / ".cache" / "edgekd")


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _valid(stage_dir: Path, key: str) -> dict[str, Any] | None:
    res = read_result(stage_dir)
    if not res or res.get("key") != key or res.get("schema_version") != RESULT_SCHEMA_VERSION:
        return None
    for rel, digest in res.get("sha256", {}).items():
        f = stage_dir / rel
        if not f.is_file() or sha256_file(f) != digest:
            return None
    return res


def stage_key(stage: Stage, ctx: BuildContext, inputs: dict[str, StageResult]) -> str:
    return stable_hash({"stage": stage.name, "edgekd": __version__, "config": stage.config(ctx),
                        "reads": card_slice(ctx, stage.reads),
                        "inputs": {k: {"key": v.key, "sha256": v.sha256} for k, v in sorted(inputs.items())}})


def run_stage(stage: Stage, ctx: BuildContext, inputs: dict[str, StageResult], force: bool = False) -> StageResult:
    key = stage_key(stage, ctx, inputs)
    if ctx.world > 1:
        return _run_stage_ranks(stage, ctx, inputs, key, force)
    if not force:
        reused = _reuse(stage, ctx, key)
        if reused is not None:
            return reused
    out, tmp, seconds = _execute(stage, ctx, inputs)
    return _publish(stage, ctx, inputs, key, out, tmp, seconds)


def _reuse(stage: Stage, ctx: BuildContext, key: str) -> StageResult | None:
    final = ctx.out / stage.name
    res = _valid(final, key)
    if res is None:
        return None
    return StageResult(stage.name, key, final, res["outputs"], res["metrics"], reused=True,
                       seconds=res.get("seconds", 0.0), sha256=res.get("sha256", {}))


def _execute(stage: Stage, ctx: BuildContext, inputs: dict[str, StageResult]) -> tuple[StageOutput, Path, float]:
    """Run the stage function in a private temp folder: `.NAME.tmp-PID/` of the build folder on rank 0
    (published by renaming), a local temp folder on the other ranks (their copies are discarded; a
    PID of another node would mean nothing in the shared build folder)."""
    import tempfile

    if ctx.rank == 0:
        tmp = ctx.out / f".{stage.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f"edgekd-{stage.name}-rank{ctx.rank}-"))
    if ctx.console is not None and not getattr(ctx.console, "is_terminal", True):
        # A log file gets no live progress bar: say what is running, so a long stage is not silence.
        ctx.log(f"→ {stage.name} started")
    t0 = time.perf_counter()
    try:
        out = stage.fn(inputs, ctx.for_stage(stage), tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, tmp, time.perf_counter() - t0


def _publish(stage: Stage, ctx: BuildContext, inputs: dict[str, StageResult], key: str, out: StageOutput, tmp: Path,
             seconds: float) -> StageResult:
    final = ctx.out / stage.name
    digests = {}
    for rel in out.outputs.values():
        f = tmp / rel
        if not f.is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            raise StageError(f"stage '{stage.name}' did not write its output {rel}", hint="this is a bug in edgekd; rerun with --debug")
        digests[rel] = sha256_file(f)
    result = {
        "schema_version": RESULT_SCHEMA_VERSION, "stage": stage.name, "key": key, "edgekd_version": __version__,
        "config": stage.config(ctx), "reads": card_slice(ctx, stage.reads),
        "inputs": {k: {"key": v.key, "dir": v.dir.name} for k, v in inputs.items()},
        "outputs": out.outputs, "sha256": digests, "metrics": out.metrics, "seconds": seconds,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(tmp / "result.json", result)
    # Swap into place (fsynced): `final` is always either the previous complete stage or the new
    # complete stage, never a mix.
    publish_dir_atomic(tmp, final)
    return StageResult(stage.name, key, final, out.outputs, out.metrics, reused=False, seconds=seconds, sha256=digests)


def _run_stage_ranks(stage: Stage, ctx: BuildContext, inputs: dict[str, StageResult], key: str,
                     force: bool) -> StageResult:
    """A stage under torchrun. Rank 0 decides reuse and is the only one to publish; a `parallel` stage's
    function runs on every rank, any other stage's on rank 0 alone while the others wait. A failure on
    any rank is raised on every rank at the next agreement (`comm.agree`): rank 0 reports it, nothing
    is published, and no rank goes on to the next stage alone."""
    comm, rank = ctx.comm, ctx.rank
    key = comm.broadcast(key)  # rank 0's key names the stage (a key may hold a time, e.g. the report's)
    reused = _reuse(stage, ctx, key) if rank == 0 and not force else None
    if comm.broadcast(reused is not None):
        return reused if rank == 0 else _reuse(stage, ctx, key) or _missing(stage)
    out = tmp = None
    seconds = 0.0
    err: BaseException | None = None
    if stage.parallel or rank == 0:
        try:
            out, tmp, seconds = _execute(stage, ctx, inputs)
        except BaseException as e:  # noqa: BLE001 - handed to every rank by comm.agree below
            err = e
    comm.agree(err)
    res = None
    if rank == 0:
        try:
            res = _publish(stage, ctx, inputs, key, out, tmp, seconds)
        except BaseException as e:  # noqa: BLE001 - handed to every rank by comm.agree below
            err = e
    elif tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)  # this rank's copy: rank 0 published its own
    comm.agree(err)  # after rank 0 published: the others read its folder
    if rank == 0:
        return res
    got = _reuse(stage, ctx, key)  # rank 0's published folder: the same result on every rank
    if got is None:
        _missing(stage)
    import dataclasses

    return dataclasses.replace(got, reused=False, seconds=seconds)


def _missing(stage: Stage) -> StageResult:
    raise UserError(f"stage '{stage.name}' was published by rank 0 but this rank cannot read it",
                    hint="under torchrun the build folder must be on a filesystem every node shares (NFS, Lustre, ...)")


def prepare_out(out: Path) -> None:
    """Create the build folder, or fail with exit 2 if it cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the build folder {out}: {e.strerror or e}",
                        hint="choose another --out folder you can write to") from None


def run(stages: list[Stage], ctx: BuildContext, only: str | None = None, upto: str | None = None,
        preflight: Sequence[Callable[[BuildContext], None]] = ()) -> dict[str, StageResult]:
    """Run (or reuse) stages in order. `only` forces that stage to rerun, reusing its inputs;
    `upto` stops after the named stage. `preflight`: the caller's up-front checks (the target
    family's), run before anything else; they raise an EdgekdError to refuse the build."""
    names = [s.name for s in stages]
    for given in {only, upto} - {None}:
        if given not in names:
            raise UserError(f"recipe '{ctx.recipe.name}' has no stage '{given}'", hint=f"its stages: {', '.join(names)}")
    # Pre-flight: the caller's checks (the target family's), then every stage's settings are computed
    # (and so validated) before any work starts, so a bad soc_version, option or input file of a late
    # stage fails in seconds, not after the teacher trained. Under torchrun every rank checks, and the
    # ranks agree before going on (a rank that failed earlier, in the caller, agrees here too).
    rank, world = ctx.rank, ctx.world
    err: BaseException | None = None
    try:
        for check in preflight:
            check(ctx)
        for stage in stages:
            if stage.when(ctx):
                stage.config(ctx)
        prepare_out(ctx.out)
    except BaseException as e:  # noqa: BLE001 - re-raised (on every rank) by _agree
        err = e
    _agree(ctx, err)
    if world > 1:
        _check_shared_folder(ctx)
    # One build per folder: a second one would delete this one's temp folders and interleave its
    # stages with ours. Under torchrun the ranks share rank 0's folder; rank 0 holds the lock.
    lock = BuildLock(ctx.out) if rank == 0 else None
    err = None
    if lock is not None:
        try:
            lock.acquire()
        except BaseException as e:  # noqa: BLE001 - re-raised (on every rank) by _agree
            err = e
    _agree(ctx, err)
    try:
        return _run_locked(stages, ctx, only, upto, rank)
    finally:
        if lock is not None:
            lock.release()


def _agree(ctx: BuildContext, err: BaseException | None) -> None:
    if ctx.world > 1:
        ctx.comm.agree(err)
    elif err is not None:
        raise err


def _check_shared_folder(ctx: BuildContext) -> None:
    """Every rank must see rank 0's build folder and cache (stages published by rank 0 are read by all)."""
    import uuid

    name = ctx.comm.broadcast(f".rank-probe-{uuid.uuid4().hex}" if ctx.rank == 0 else None)
    probes = [ctx.out / name, ctx.cache_dir / name]
    if ctx.rank == 0:
        for p in probes:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("")
    ctx.comm.broadcast(None)  # written before anyone looks
    seen = all(p.is_file() for p in probes)
    ctx.comm.broadcast(None)  # everyone looked before rank 0 removes them
    if ctx.rank == 0:
        for p in probes:
            p.unlink(missing_ok=True)
    err = None if seen else UserError(
        f"rank {ctx.rank} cannot see rank 0's build folder {ctx.out} or cache {ctx.cache_dir}",
        hint="under torchrun the build folder (--out) and EDGEKD_CACHE must be on a filesystem every node shares")
    ctx.comm.agree(err)


def _run_locked(stages: list[Stage], ctx: BuildContext, only: str | None, upto: str | None,
                rank: int) -> dict[str, StageResult]:
    if rank == 0:
        # A killed earlier build's partial stage or set-aside old stage; a live pid's are not ours to delete.
        clean_dead_leftovers(ctx.out)
        clean_dead_leftovers(ctx.out / ".checkpoints")  # a checkpoint write cut short
        if ctx.recipe_file is not None:  # the build's reproducible record, comments included
            write_bytes_atomic(ctx.out / "recipe.yaml", Path(ctx.recipe_file).read_bytes())
    results: dict[str, StageResult] = {}
    lineage = []
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    status = "running"
    # a stage this build leaves out (its `when`) is not part of it, even where an earlier build in the folder ran it:
    # the report must not read that stage's old folder as this build's (the lineage entry it left is dropped)
    skipped = frozenset(s.name for s in stages if not s.when(ctx))
    if rank == 0:
        _write_run(ctx, started, status, lineage, skipped)  # later stages (report) read the build's identity from it
    try:
        for stage in stages:
            if stage.name in skipped:
                continue
            inputs = {d: results[d] for d in stage.deps if d in results}
            res = run_stage(stage, ctx, inputs, force=(stage.name == only))
            results[stage.name] = res
            lineage.append({"stage": stage.name, "key": res.key, "dir": res.dir.name, "reused": res.reused,
                            "seconds": round(res.seconds, 3), "inputs": sorted(inputs)})
            if ctx.console is not None:
                note = "reused" if res.reused else f"{res.seconds:.1f} s"
                ctx.log(f"[green]✓[/] {stage.name} [dim]({note})[/]")
            if rank == 0:
                _write_run(ctx, started, status, lineage, skipped)
            if stage.name == upto:
                break
        status = "ok"
    except EdgekdError as e:
        status = f"failed: {e.message}"
        raise
    except BaseException as e:
        status = f"failed: {type(e).__name__}"
        raise
    finally:
        if rank == 0:
            _write_run(ctx, started, status, lineage, skipped)
    return results


def _write_run(ctx: BuildContext, started: str, status: str, lineage: list,
               skipped: frozenset[str] = frozenset()) -> None:
    # A single-stage run (`edgekd quantize DIR`) keeps the lineage of the stages it did not touch (but not of
    # those this build's settings leave out: `skipped`).
    # A corrupt run.json is refused (exit 2) rather than silently overwritten without its lineage.
    prev = ctx.out / "run.json"
    if prev.is_file():
        prev_stages = load_run(ctx.out)["stages"]
        done = {e["stage"] for e in lineage}
        old = [e for e in prev_stages if e["stage"] not in done and e["stage"] not in skipped]
        order = {e["stage"]: i for i, e in enumerate(prev_stages)}
        lineage = sorted(lineage + old, key=lambda e: order.get(e["stage"], len(order)))
    write_json_atomic(ctx.out / "run.json", {
        "schema_version": RUN_SCHEMA_VERSION, "edgekd_version": __version__, "recipe": ctx.recipe_ref,
        "recipe_name": ctx.recipe.name, "task": ctx.recipe.task, "target": ctx.target_ref, "target_name": ctx.target.name,
        "overrides": ctx.overrides, "quick": ctx.quick, "options": ctx.options, "started": started,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "status": status,
        "stages": lineage,
    })


def load_run(build_dir: Path) -> dict[str, Any]:
    p = build_dir / "run.json"
    if not p.is_file():
        raise UserError(f"{build_dir} is not an edgekd build folder (no run.json)",
                        hint="give the --out folder of an earlier `edgekd build`")
    hint = "delete it (or the whole folder) and rebuild with `edgekd build`"
    try:
        run = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{p} is corrupt (not JSON)", hint=hint) from None
    except OSError as e:
        raise UserError(f"cannot read {p}: {e.strerror or e}", hint=hint) from None
    problem = run_problem(run)
    if problem:
        raise UserError(f"{p} is malformed: {problem}", hint=hint)
    run.setdefault("stages", [])
    return run
