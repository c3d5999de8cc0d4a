"""Export a run in any format of the engine's registry (PEFT adapter, fused Hugging Face model,
mlx-lm adapter, GGUF for llama.cpp/LM Studio, Ollama folder, GGUF LoRA, 4/8-bit MLX), showing the
size it will write, and upload it to the Hub, with a dry-run preview of the files and the card.

The engine does the work (smolmac.export.export_run, smolmac.hub.upload), imported inside a
thread worker; its progress lines come back as JobLog messages, failures as an error modal.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, RichLog, Select, Static, Switch
from textual.worker import Worker, WorkerState

from smolmac.export import EXPORTERS
from smolmac.launcher import list_runs
from smolmac.tui.dialogs.confirm import ConfirmDialog
from smolmac.tui.i18n import t
from smolmac.tui.messages import JobDone, JobLog

FORMATS = tuple((name, e.help) for name, e in EXPORTERS.items())  # from the engine's registry


def dtype_choices(fmt: str) -> list[str]:
    """What the dtype field offers for a format: its --dtype values, plus for GGUF models the
    --quantize types the gguf package can write."""
    kind = EXPORTERS[fmt]
    choices = list(kind.dtypes)
    if "quantize" in kind.options:
        from smolmac.export.gguf_file import writable_types

        choices += [q for q in writable_types() if q not in choices]
    return choices


class ExportScreen(Screen):
    """Choose a run, a format, a dtype and a destination; export; then dry-run or upload."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", t("Back")),
        Binding("ctrl+e", "export", t("Export"), priority=True),
        Binding("ctrl+d", "dry_run", t("Dry run"), priority=True),
        Binding("ctrl+u", "upload", t("Upload"), priority=True),
    ]

    def __init__(self, run_dir: str | None = None):
        super().__init__()
        self.run_dir = run_dir
        self.busy = False
        self.transcript: list[str] = []  # every line shown in the log, as plain text

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(t("Export and upload"), classes="screen-title")
        with VerticalScroll(id="export-form"):
            with Horizontal(classes="field-row"):
                yield Label(t("run"))
                yield Select(self._run_options(), value=self.run_dir or Select.NULL, id="export-run", compact=True, prompt=t("choose a run"))
            with Horizontal(classes="field-row"):
                yield Label(t("format"))
                yield Select([(f"{key}: {t(label)}", key) for key, label in FORMATS], value="peft", allow_blank=False, id="export-format", compact=True)
            with Horizontal(classes="field-row"):
                yield Label("dtype")
                yield Select([(t("as trained"), "")] + [(d, d) for d in dtype_choices("peft")], value="", allow_blank=False, id="export-dtype", compact=True)
            with Horizontal(classes="field-row"):
                yield Label(t("size"))
                yield Static("", id="export-size")
            with Horizontal(classes="field-row"):
                yield Label(t("destination"))
                yield Input(id="export-out", compact=True)
            with Horizontal(classes="field-row"):
                yield Label(t("overwrite"))
                yield Switch(False, id="export-overwrite")
            with Horizontal(classes="field-row"):
                yield Label(t("Hub repo"))
                yield Input(id="export-repo", compact=True, placeholder=t("you/my-model"))
            with Horizontal(classes="field-row"):
                yield Label(t("private"))
                yield Switch(True, id="export-private")
        yield RichLog(id="export-log", wrap=True, markup=False, max_lines=2000)
        yield Footer(compact=True)

    def _run_options(self) -> list[tuple[str, str]]:
        options = []
        for r in list_runs(self.app.runs_dir, self.app.launcher):
            if r["status"] in ("finished", "stopped"):
                options.append((f"{r['name']} ({t(r['status'])})", r["dir"]))
            for s in r.get("stages") or []:  # a pipeline's stages export one by one too
                if s["status"] in ("finished", "stopped") and s.get("method") != "tokenizer":
                    options.append((f"{r['name']} › {s['label']} ({t(s['status'])})", s["dir"]))
        if self.run_dir and self.run_dir not in {d for _, d in options}:
            options.insert(0, (Path(self.run_dir).name, self.run_dir))
        return options

    def on_mount(self) -> None:
        self._default_destination()
        self._estimate()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "export-format":
            dtype = self.query_one("#export-dtype", Select)
            keep = dtype.value
            choices = dtype_choices(event.value)
            dtype.set_options([(t("as trained"), "")] + [(d, d) for d in choices])
            dtype.value = keep if keep in choices else ""
        if event.select.id in ("export-run", "export-format"):
            self._default_destination()
        self._estimate()

    def _default_destination(self) -> None:
        run = self.query_one("#export-run", Select).value
        fmt = self.query_one("#export-format", Select).value
        if run is not Select.NULL:
            suffix = EXPORTERS[fmt].suffix or ""
            parent = Path(run).parent  # a pipeline's stage: named after both
            name = f"{parent.name}-{Path(run).name}" if (parent / "events.jsonl").is_file() else Path(run).name
            self.query_one("#export-out", Input).value = str(Path("exports") / f"{name}-{fmt}{suffix}")

    def _choice(self) -> dict:
        """The form as export_run's arguments (a --quantize type goes as quantize, not dtype)."""
        fmt = self.query_one("#export-format", Select).value
        value = self.query_one("#export-dtype", Select).value or None
        quantize = value if value and value not in EXPORTERS[fmt].dtypes else None
        return {"fmt": fmt, "dtype": None if quantize else value, "quantize": quantize}

    def _estimate(self) -> None:
        run = self.query_one("#export-run", Select).value
        if run is Select.NULL:
            self.query_one("#export-size", Static).update("")
            return
        self.query_one("#export-size", Static).update(t("estimating…"))
        self.estimate_size(run, self._choice())

    @work(thread=True, exclusive=True, group="size", exit_on_error=False)
    def estimate_size(self, run: str, choice: dict) -> None:
        try:
            from smolmac.export.sizes import estimate, human_size

            size = estimate(run, choice["fmt"], choice["dtype"], choice["quantize"])
            text = t("≈ {size} for {fmt}", size=human_size(size), fmt=choice["fmt"]) if size is not None else t("unknown: the base model is not on this machine")
        except Exception as e:  # an estimate must never take the screen down; the export will say more
            text = t("unknown ({error})", error=str(e))
        self.app.call_from_thread(self._show_size, text)

    def _show_size(self, text: str) -> None:
        if self.is_mounted:  # the screen may have been closed while the estimate ran
            self.query_one("#export-size", Static).update(text)

    def log_line(self, text: str) -> None:
        self.transcript.append(text)
        self.query_one("#export-log", RichLog).write(text)

    # -- jobs -------------------------------------------------------------------------------

    def _start(self, job: str, **kwargs) -> None:
        if self.busy:
            self.notify(t("A job is already running."), severity="warning")
            return
        self.busy = True
        self.run_job(job, kwargs)

    @work(thread=True, exclusive=True, group="export", exit_on_error=False)
    def run_job(self, job: str, kwargs: dict):
        def say(text) -> None:
            self.post_message(JobLog(str(text)))

        if job == "export":
            from smolmac.export import export_run

            result = export_run(kwargs["run_dir"], kwargs["fmt"], kwargs["out"], dtype=kwargs["dtype"], quantize=kwargs["quantize"], overwrite=kwargs["overwrite"], on_message=say)
        else:
            from smolmac.hub import upload

            result = upload(kwargs["dir"], kwargs["repo"], private=kwargs["private"], dry_run=kwargs["dry_run"], on_message=say)
        self.post_message(JobDone(job, result))
        return result

    def on_job_log(self, message: JobLog) -> None:
        self.log_line(message.text)

    def on_job_done(self, message: JobDone) -> None:
        self.busy = False
        if message.job == "export":
            self.log_line("✓ " + t("exported to {out}", out=str(message.result)))
            self.notify(t("Exported to {out}", out=str(message.result)))
        elif message.result is not None and not isinstance(message.result, (bool, int)):
            self.log_line(str(message.result))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "export" and event.state == WorkerState.ERROR:
            self.busy = False
            self.log_line("✗ " + str(event.worker.error))
            self.app.show_error(event.worker.error)

    # -- actions ----------------------------------------------------------------------------

    def action_export(self) -> None:
        run = self.query_one("#export-run", Select).value
        out = self.query_one("#export-out", Input).value.strip()
        if run is Select.NULL:
            self.app.show_error(t("export: choose a finished or stopped run first."))
            return
        if not out:
            self.app.show_error(t("export: give a destination folder."))
            return
        choice = self._choice()
        self.log_line(Text(t("exporting {run} as {fmt} to {out}…", run=Path(run).name, fmt=choice["fmt"], out=out)).plain)
        self._start("export", run_dir=run, out=out, overwrite=self.query_one("#export-overwrite", Switch).value, **choice)

    def _upload_args(self) -> dict | None:
        out = self.query_one("#export-out", Input).value.strip()
        repo = self.query_one("#export-repo", Input).value.strip()
        if out and Path(out).is_file():
            self.app.show_error(t("upload: {out} is a single file; the Hub upload takes an export folder (the ollama format holds the GGUF in one).", out=out))
            return None
        if not out or not Path(out).is_dir():
            self.app.show_error(t("upload: export the run first (Ctrl+E); {out} is not an export folder yet.", out=out or "-"))
            return None
        if not repo:
            self.app.show_error(t("upload: give the Hub repository, e.g. you/my-model."))
            return None
        return {"dir": out, "repo": repo, "private": self.query_one("#export-private", Switch).value}

    def action_dry_run(self) -> None:
        args = self._upload_args()
        if args:
            self.log_line(t("dry run: what would be uploaded to {repo}", repo=args["repo"]))
            self._start("upload", dry_run=True, **args)

    def action_upload(self) -> None:
        args = self._upload_args()
        if not args:
            return

        def go(yes: bool | None) -> None:
            if yes:
                self.log_line(t("uploading {dir} to {repo}…", dir=args["dir"], repo=args["repo"]))
                self._start("upload", dry_run=False, **args)

        visibility = t("private") if args["private"] else t("public")
        self.app.push_screen(ConfirmDialog(t("Upload"), t("Upload {dir} to the {visibility} Hub repository {repo}?", dir=args["dir"], visibility=visibility, repo=args["repo"]), yes=t("Upload")), go)
