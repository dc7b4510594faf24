"""The `edgekd` command line: thin; parses, calls the library, renders with rich.

Only light modules are imported here; torch, onnxruntime and the SDKs load inside commands.
User errors print one line and a hint and exit with the contract's code; --debug shows tracebacks.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from edgekd.errors import EXIT_INTERNAL, EdgekdError, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distill a small student from a teacher, quantize, export and profile it for an edge target.")

_state: dict[str, Any] = {"debug": False}


def _console(quiet: bool = False, to_stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if to_stderr else sys.stdout
    if quiet:
        _quiet_logs()
    # Logs (CI) are not terminals: give tables room instead of rich's 80-column default.
    return Console(stderr=to_stderr, quiet=quiet, highlight=False, width=None if stream.isatty() else 140)


def _fail(e: BaseException) -> None:
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True, highlight=False, soft_wrap=True)  # one line, never wrapped
    from edgekd.dist import quiet_error

    if quiet_error(e) and not _state["debug"]:  # under torchrun: another rank's failure, reported on rank 0
        raise typer.Exit(getattr(e, "exit_code", EXIT_INTERNAL))
    if _state["debug"]:
        import traceback

        traceback.print_exception(e)
    if isinstance(e, EdgekdError):
        err.print(f"[bold red]error:[/] {escape(e.message)}")
        if e.hint:
            err.print(f"[dim]hint:[/] {escape(e.hint)}")
        raise typer.Exit(e.exit_code)
    err.print(f"[bold red]internal error:[/] {escape(type(e).__name__)}: {escape(str(e).splitlines()[0] if str(e) else '')}")
    err.print("[dim]hint:[/] rerun with --debug for the traceback, and report it")
    raise typer.Exit(EXIT_INTERNAL)


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        _fail(EdgekdError("interrupted", hint="rerun the same command: finished stages are reused", exit_code=130))
    except Exception as e:  # noqa: BLE001 — the one place that turns every failure into exit codes
        _fail(e)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show tracebacks and DEBUG log messages"),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="log messages: warnings and errors only")) -> None:
    _state["debug"] = debug or bool(os.environ.get("EDGEKD_DEBUG"))
    import logging

    _setup_logging(logging.DEBUG if _state["debug"] else logging.WARNING if quiet else logging.INFO)
    if not _state["debug"]:
        _quiet_third_party_logs()


# Import-time chatter of libraries edgekd loads indirectly: transformers imports torchao, whose
# CUDA-only kernels cannot load on a CPU host, and torchao registers enums with torch's pytree.
# Neither affects a build; --debug keeps them.
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def _quiet_third_party_logs() -> None:
    import logging

    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _setup_logging(level: int) -> None:
    """The one logging set-up: a rich handler on stderr (stdout carries --json reports and `init`'s
    card). edgekd's loggers log at `level`; third-party libraries at WARNING, whatever `level` is
    (their DEBUG/INFO would drown edgekd's). Idempotent: a second call replaces the handler."""
    import logging

    from rich.logging import RichHandler

    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_edgekd", False)]:
        root.removeHandler(h)
    handler = RichHandler(console=_console(to_stderr=True), show_time=False, show_path=False, markup=False,
                          rich_tracebacks=level <= logging.DEBUG)
    handler._edgekd = True  # type: ignore[attr-defined]  # marks ours for the replacement above
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("edgekd").setLevel(level)


def _quiet_logs() -> None:
    """A command's --quiet ("print only errors") also holds edgekd's log notices back."""
    import logging

    if not _state["debug"]:
        logging.getLogger("edgekd").setLevel(logging.WARNING)


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True, disable=console.quiet)


def _make_ctx(recipe: str, target: str, out: Path | None, sets: dict[str, Any], quick: bool, console, **options):
    from edgekd.cards import load_recipe, load_target
    from edgekd.dist import rank_world
    from edgekd.pipeline import BuildContext

    from edgekd.errors import TargetUnavailable
    from edgekd.targets import build_ready, resolve

    rc = load_recipe(recipe, sets, quick=quick)
    card, resolved, line = resolve(target)  # --target ascend|cuda|mobile: the family's card for this host
    if line:
        console.print(line)
    tc = load_target(card, {**resolved, **sets}, quick=quick)

    ready, why = build_ready(tc)
    if not ready:  # e.g. cuda without a GPU: exit 3 before any training
        raise TargetUnavailable(f"target '{tc.name}' cannot run here: {why}",
                                hint="`edgekd targets` lists what each target needs and what this host has")
    out = out or Path("builds") / f"{rc.name}-{tc.name}{'-quick' if quick else ''}"
    rank, world = rank_world()  # torchrun's; the engine is told, it does not look
    from edgekd import dist

    return BuildContext(out=out.resolve(), recipe=rc, target=tc, recipe_ref=recipe, target_ref=target, overrides=sets,
                        quick=quick, console=console, options=options, rank=rank, world=world,
                        comm=dist if world > 1 else None)


def _joined(make: Callable[[], Any]) -> Any:
    """`make()` (the build context) in a process of a torchrun job: the process group is joined first,
    and a failure here is agreed with the other ranks, whose pipeline's first step is that agreement;
    so a card error is one error on rank 0, not one per rank. One process: just `make()`."""
    from edgekd import dist

    rank, world = dist.rank_world()
    if world == 1:
        return make()
    dist.init(dist.default_device())  # gloo on CPU, nccl (+ gloo) on GPUs, hccl on an Ascend NPU
    try:
        return make()
    except BaseException as e:  # noqa: BLE001 - raised again on every rank by dist.agree
        dist.agree(e)
        raise


def _run_pipeline(ctx, only: str | None = None, upto: str | None = None, json_out: bool = False) -> None:
    from edgekd import pipeline, tasks
    from edgekd.targets import check as check_target
    from edgekd.targets import check_task

    task = tasks.task_for(ctx.recipe.task)
    with _progress(ctx.console) as prog:
        ctx.progress = prog
        # pre-flight, before any stage: the target card's own checks, and that its family ships this task's students
        results = pipeline.run(tasks.graph_for(ctx.recipe), ctx, only=only, upto=upto,
                               preflight=[lambda c: check_target(c.target), lambda c: check_task(c.target, task.name)])
    if "report" in results and ctx.rank == 0:  # under torchrun rank 0 speaks for the build
        report_path = results["report"].path("report.json")
        report = json.loads(report_path.read_text())
        if json_out:
            sys.stdout.write(json.dumps(report, indent=2) + "\n")
        else:
            from edgekd.report.terminal import render

            render(report, ctx.console)
            ctx.log(f"\nreport: {report_path.parent}/report.{{json,md,html}}")
        final = (report.get("search") or {}).get("final")
        if final is not None and not final["met"] and ctx.options.get("strict"):  # the gate: exit 1, after the report
            from edgekd.errors import EdgekdError

            raise EdgekdError(f"the shipped student {final['artifact']} misses the latency/size budget",
                              hint=f"see report.json's search.final: {final['checks']}", exit_code=1)


@app.command()
def build(
    target: str = typer.Option("cpu", "--target", "-t", help="target card name or path (edgekd targets)"),
    recipe: str = typer.Option("fashion-cnn", "--recipe", "-r", help="recipe card name or path (edgekd recipes)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="build folder (default builds/RECIPE-TARGET)"),
    quick: bool = typer.Option(False, "--quick", help="subsets, few epochs, short profiling (CI, smoke tests)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a card key: --set distill.epochs=3"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print only errors"),
    json_out: bool = typer.Option(False, "--json", help="print report.json to stdout"),
    strict: bool = typer.Option(False, "--strict", help="fail when no quantized candidate fits the accuracy budget"),
    allow_unsupported: bool = typer.Option(False, "--allow-unsupported", help="ascend: keep going past op-lint failures"),
    latency_budget: Optional[str] = typer.Option(None, "--latency-budget", help="size the student to a p50 on the "
                                                 "target runtime, e.g. 0.5ms (sets student.search.latency_ms)"),
    size_budget: Optional[str] = typer.Option(None, "--size-budget", help="size the student to a shipped artifact "
                                              "size, e.g. 64KiB (sets student.search.size_kib)"),
) -> None:
    """Run the whole job: teacher → distill → export → quantize → profile → select → report."""
    def go() -> None:
        from edgekd.config import parse_sets

        from edgekd.dist import rank_world

        console = _console(quiet=quiet or rank_world()[0] != 0, to_stderr=json_out)
        budgets = {k: v for k, v in (("student.search.latency_ms", latency_budget),
                                     ("student.search.size_kib", size_budget)) if v is not None}
        ctx = _joined(lambda: _make_ctx(recipe, target, out, {**parse_sets(set_), **budgets}, quick, console, strict=strict,
                                        allow_unsupported=allow_unsupported))
        console.print(f"[bold]edgekd build[/] recipe={ctx.recipe.name} target={ctx.target.name}"
                      f"{' (quick)' if quick else ''} → {ctx.out}")
        from edgekd.cards import card_file

        ctx.recipe_file = card_file(recipe)  # copied into the build as its reproducible record
        _run_pipeline(ctx, json_out=json_out)
    _guard(go)


def _stage_command(stage: str):
    def cmd(
        build_dir: Path = typer.Argument(..., help="a build folder made by `edgekd build`"),
        quiet: bool = typer.Option(False, "--quiet", "-q"),
    ) -> None:
        def go() -> None:
            from edgekd.pipeline import load_run

            from edgekd.dist import rank_world

            console = _console(quiet=quiet or rank_world()[0] != 0)

            def make():
                run = load_run(build_dir)
                return _make_ctx(run["recipe"], run["target"], build_dir, run.get("overrides", {}),
                                 run.get("quick", False), console, **run.get("options", {}))
            ctx = _joined(make)
            _run_pipeline(ctx, only=stage, upto=stage)
        _guard(go)
    cmd.__doc__ = f"Run the {stage} stage alone on a build folder (earlier stages are reused)."
    return cmd


def _register_stage_commands() -> None:
    from edgekd.tasks import stage_commands  # the task table only: no task module is imported here

    for name in stage_commands():
        app.command(name=name)(_stage_command(name))


_register_stage_commands()


@app.command()
def report(
    build_dir: Optional[Path] = typer.Argument(None, help="a build folder made by `edgekd build`"),
    json_out: bool = typer.Option(False, "--json", help="print report.json to stdout"),
    schema: bool = typer.Option(False, "--schema", help="print report.json's JSON Schema (no build folder needed)"),
) -> None:
    """Regenerate report.json/.md/.html from the build folder's stage result files alone."""
    def go() -> None:
        if schema:
            from edgekd.report.schema import report_schema_text

            sys.stdout.write(report_schema_text())
            return
        if build_dir is None:
            raise UserError("report needs BUILD_DIR", hint="edgekd report builds/x (or --schema for the JSON Schema)")
        from edgekd.fsio import BuildLock
        from edgekd.pipeline import load_run
        from edgekd.report import write_all
        from edgekd.tasks import build_report
        from edgekd.tasks.stages.report import REPORT_DIRNAME

        load_run(build_dir)
        # a build running in this folder rewrites the stage results the report reads: one at a time
        with BuildLock(build_dir):
            rep = build_report(build_dir)
            dest = build_dir / REPORT_DIRNAME
            dest.mkdir(exist_ok=True)
            files = write_all(rep, dest)
        if json_out:
            sys.stdout.write(json.dumps(rep, indent=2) + "\n")
        else:
            from edgekd.report.terminal import render

            console = _console()
            render(rep, console)
            console.print("wrote " + ", ".join(str(f) for f in files))
    _guard(go)


@app.command()
def init(
    teacher: str = typer.Option(..., "--teacher", help="package.module:function, FILE.onnx, a Hugging Face folder, pkg:NAME, torchvision:NAME, timm:NAME or a zoo name; "
                                                 "a causal language model (HF *ForCausalLM folder, FILE.gguf) writes a text-generation card"),
    data: str = typer.Option(..., "--data", help="an image folder (class subfolders), .csv/.jsonl/.npz, or a save_to_disk folder; "
                                                 "for a language model: prompts.jsonl ({\"prompt\": ...} per line, optional \"template\")"),
    weights: Optional[str] = typer.Option(None, "--weights", help="the teacher's state dict (.pt weights_only, or .safetensors)"),
    student: Optional[str] = typer.Option(None, "--student", help="your student (same forms as --teacher); default: a small zoo model"),
    student_weights: Optional[str] = typer.Option(None, "--student-weights", help="initial weights of the student"),
    name: Optional[str] = typer.Option(None, "--name", help="recipe name (default: from the data folder)"),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="csv/jsonl: the label column (default: label)"),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="csv/jsonl: the text column (default: text if present)"),
    teacher_kwargs: Optional[str] = typer.Option(None, "--teacher-kwargs", help="the teacher builder's kwargs as YAML, e.g. '{num_classes: 10}'"),
    student_kwargs: Optional[str] = typer.Option(None, "--student-kwargs", help="the student builder's kwargs as YAML"),
    unlabeled: Optional[str] = typer.Option(None, "--unlabeled", help="a transfer set without labels, in the data's layout (written as data.unlabeled)"),
    latency_budget: Optional[str] = typer.Option(None, "--latency-budget", help="size the student to a p50 on the target "
                                                 "runtime, e.g. 0.5ms (written as student.search.latency_ms)"),
    size_budget: Optional[str] = typer.Option(None, "--size-budget", help="size the student to a shipped artifact size, "
                                              "e.g. 64KiB (written as student.search.size_kib)"),
) -> None:
    """Inspect your teacher and data; print a complete, commented recipe card: edgekd init ... > my.yaml"""
    def go() -> None:
        from edgekd.config import parse_value
        from edgekd.init import init_card

        err = _console(to_stderr=True)
        text = init_card(teacher, data, weights=weights, student=student, student_weights=student_weights, name=name,
                         label_column=label_column, text_column=text_column, log=lambda m: err.print(m.strip()),
                         teacher_kwargs=parse_value(teacher_kwargs) if teacher_kwargs else None,
                         student_kwargs=parse_value(student_kwargs) if student_kwargs else None,
                         unlabeled=unlabeled, latency_budget=latency_budget, size_budget=size_budget)
        sys.stdout.write(text)  # the card alone: the user's code ran with its stdout sent to stderr
        err.print("[dim]card written; build it with: edgekd build --target cpu --recipe CARD.yaml[/]")
    _guard(go)


@app.command()
def recipes() -> None:
    """List the shipped recipe cards."""
    def go() -> None:
        from rich.table import Table

        from edgekd.cards import load_recipe, shipped

        t = Table("recipe", "task", "teacher → student", "description", box=None)
        for name in shipped("models"):
            r = load_recipe(name)
            t.add_row(name, r.task, f"{r.teacher.describe()} → {r.student.describe()}", r.description)
        _console().print(t)
    _guard(go)


@app.command()
def targets() -> None:
    """List the shipped target cards with what is available on this host, and why not."""
    def go() -> None:
        from rich.table import Table

        from edgekd.cards import load_target, shipped
        from edgekd.targets import availability, family_name

        t = Table("target", "family", "runtime", "capability", "available", "reason", box=None)
        for name in shipped("targets"):
            tc = load_target(name)
            for i, (cap, ok, why) in enumerate(availability(tc)):
                t.add_row(name if i == 0 else "", family_name(tc) if i == 0 else "", tc.runtime if i == 0 else "", cap,
                          "[green]yes[/]" if ok else "[red]no[/]", why)
        console = _console()
        console.print(t)
        from edgekd.targets import resolve

        for fam in ("ascend", "cuda", "mobile"):  # what a family name resolves to on this host
            console.print(resolve(fam)[2])
    _guard(go)


@app.command()
def profile(
    path: Path = typer.Argument(..., help="an ONNX file, or a build folder"),
    target: Optional[str] = typer.Option(None, "--target", "-t",
                                         help="default: the build's own target (a build folder), else cpu"),
    quick: bool = typer.Option(False, "--quick"),
    json_out: bool = typer.Option(False, "--json"),
    adb: Optional[str] = typer.Option(None, "--adb", help="mobile: push the build's bundle to this phone and time it there"),
) -> None:
    """Profile any ONNX file (bring your own model) or re-profile a build folder."""
    def go() -> None:
        from edgekd.cards import load_target

        if adb is not None:
            from edgekd.targets.mobile.bundle import adb_profile
            from edgekd.targets.mobile.lm_adb import adb_profile_lm, is_lm_bundle

            bundle = path / "convert" / "mobile"
            if not bundle.is_dir():
                raise UserError(f"{path} has no mobile bundle (convert/mobile/)",
                                hint="build it first: edgekd build --target mobile --out DIR")
            # a language model's bundle runs ExecuTorch's LLM runner (manifest kind executorch-llm)
            res = (adb_profile_lm if is_lm_bundle(bundle) else adb_profile)(
                bundle, adb, threads=load_target(target or "mobile").profile.threads)
            sys.stdout.write(json.dumps(res, indent=2, default=str) + "\n")
            return
        if path.is_dir():
            from edgekd.pipeline import load_run

            run = load_run(path)
            console = _console()
            ctx = _make_ctx(run["recipe"], target or run["target"], path, run.get("overrides", {}), quick or run.get("quick", False), console)
            _run_pipeline(ctx, only="profile")
            return
        if not path.is_file():
            raise UserError(f"no such file: {path}", hint="give an .onnx file or a build folder")
        from edgekd.profile.standalone import profile_onnx_file

        tc = load_target(target or "cpu", quick=quick)
        res = profile_onnx_file(path, tc)
        if json_out:
            sys.stdout.write(json.dumps(res, indent=2, default=str) + "\n")
        else:
            from edgekd.profile.standalone import render_profile

            render_profile(res, _console())
    _guard(go)


@app.command()
def regress(
    report_path: Optional[Path] = typer.Argument(None, metavar="REPORT", help="report.json of the new build"),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="stored baseline report.json"),
    max_accuracy_drop: float = typer.Option(0.5, help="points of accuracy the student may lose"),
    max_size_growth: str = typer.Option("5%", help="allowed size growth: 5% or 0.05 (a bare number > 1 is refused)"),
    max_latency_growth: Optional[str] = typer.Option(None, help="opt-in: allowed growth of the student/teacher latency ratio (a language model: of the teacher/student tokens/s ratio), e.g. 20%"),
    min_kd_gain: Optional[float] = typer.Option(None, help="opt-in: points the KD student must beat the labels-only control by (works without --baseline)"),
    update_baseline: bool = typer.Option(False, "--update-baseline", help="write REPORT as the new baseline"),
    json_out: bool = typer.Option(False, "--json"),
    history: Optional[Path] = typer.Option(None, "--history", help="plot accuracy vs size over reports in a folder"),
) -> None:
    """The CI gate: exit 1 when accuracy falls or size grows past the baseline."""
    def go() -> None:
        from edgekd import regress as rg
        from edgekd.report.schema import load_report

        console = _console(to_stderr=json_out)
        if history is not None:
            console.print(f"wrote {rg.history(history)}")
            if report_path is None:
                return
        if report_path is None or (baseline is None and min_kd_gain is None):
            raise UserError("regress needs REPORT and --baseline BASELINE (or --min-kd-gain P)",
                            hint="edgekd regress builds/x/report/report.json --baseline baselines/x.json")
        rep = load_report(report_path)
        if update_baseline:
            if baseline is None:
                raise UserError("--update-baseline needs --baseline PATH", hint="the file the report is written to")
            rg.update_baseline(rep, baseline)
            console.print(f"baseline written: {baseline}")
            return
        if baseline is None:
            res = rg.kd_gain_gate(rep, min_kd_gain)
        else:
            res = rg.compare(rep, load_report(baseline), max_accuracy_drop=max_accuracy_drop,
                             max_size_growth=_pct(max_size_growth),
                             max_latency_growth=_pct(max_latency_growth) if max_latency_growth else None,
                             min_kd_gain=min_kd_gain)
        if json_out:
            sys.stdout.write(json.dumps(rg.gate_json(res), indent=2) + "\n")
        else:
            rg.render_gate(res, console)
        if not res.passed:
            raise typer.Exit(1)
    _guard(go)


def _pct(text: str) -> float:
    """A growth limit as a fraction: '5%' or '0.05'. A bare number above 1 is refused, not read as
    100x that many percent ('5' would otherwise allow 500%)."""
    t = str(text).strip()
    hint = "write a percentage like 5% or a fraction like 0.05"
    try:
        value = float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        raise UserError(f"not a percentage: '{text}'", hint=hint) from None
    if not t.endswith("%") and value > 1:
        raise UserError(f"ambiguous growth limit '{text}': a bare number is a fraction (1 = 100%)",
                        hint=f"write {t}% for {t} percent, or {value / 100:g} as a fraction")
    if value != value or value < 0 or value == float("inf"):
        raise UserError(f"growth limit must be a finite number >= 0, got '{text}'", hint=hint)
    return value


def main() -> None:
    app()


if __name__ == "__main__":
    main()
