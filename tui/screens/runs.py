"""Runs (home): every run under the runs folder, live. A pipeline is one row that expands into its
stages (x); every action works on the selected run, pipeline or stage: open, chat, compare,
export, look inside, resume, stop, delete (a whole pipeline, after asking)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from smolmac.launcher import CRASHED, list_runs
from smolmac.pipeline import headline
from smolmac.tui.dialogs.confirm import ConfirmDialog
from smolmac.tui.i18n import t
from smolmac.tui.view import fmt_time, model_label, shorten, status_text

MAX_MARKED = 4  # curves on one compare chart


@dataclass
class Row:
    """One table row: a run, a pipeline, or one stage of a pipeline (`top` is the run dir that
    owns the process and the files: the pipeline for a stage)."""

    kind: str  # "run" | "pipeline" | "stage"
    info: dict  # smolmac.runs.read_run summary (of the run, pipeline or stage)
    top: dict  # the run or pipeline the row belongs to

    @property
    def dir(self) -> str:
        return self.info["dir"]

    @property
    def name(self) -> str:
        return f"{self.top['name']}/{self.info['label']}" if self.kind == "stage" else self.info["name"]


def step_text(info: dict) -> str:
    if info["status"] == "pending" or (info.get("method") == "tokenizer" and not info.get("total_steps")):
        return "-"
    return f"{info['step']}/{info['total_steps']}" if info.get("total_steps") else str(info["step"] or "-")


class RunsScreen(Screen):
    """The table of runs, refreshed every second while the screen is shown."""

    # The footer shows what fits in 80 columns (resume, stop and delete only when they apply);
    # F1 lists every key.
    BINDINGS = [
        Binding("enter", "open", t("Open"), priority=True),
        Binding("n", "new", t("New")),
        Binding("t", "chat", t("Chat")),
        Binding("c", "compare", t("Compare")),
        Binding("i", "inspect", t("Inside")),
        Binding("e", "export", t("Export")),
        Binding("r", "resume", t("Resume")),
        Binding("s", "stop", t("Stop")),
        Binding("d", "delete", t("Delete")),
        # The same keys when their action does not apply: the action then says why (one sentence).
        Binding("r", "explain('resume')", show=False, system=True),
        Binding("s", "explain('stop')", show=False, system=True),
        Binding("d", "explain('delete')", show=False, system=True),
        Binding("x", "expand", t("Show/hide stages"), show=False),
        Binding("space", "mark", t("Mark"), show=False),
        Binding("q", "app.quit", t("Quit"), show=False),
    ]
    AUTO_FOCUS = "#runs"

    def __init__(self):
        super().__init__()
        self.runs: list[dict] = []
        self.rows: list[Row] = []
        self.marked: list[str] = []
        self.collapsed: set[str] = set()  # pipelines shown as one row
        self._shown: list | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="runs-title", classes="screen-title")
        table = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static(id="runs-empty", classes="empty")
        yield Static(id="runs-detail", classes="detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        columns = (("mark", " "), ("name", t("Run")), ("status", t("Status")), ("method", t("Method")), ("step", t("Step")),
                   ("loss", t("Loss")), ("learned", t("Learned")), ("model", t("Model")), ("started", t("Started")))
        for key, label in columns:
            table.add_column(label, key=key)
        self.refresh_runs()
        self.set_interval(1.0, self.refresh_runs)

    def on_screen_resume(self) -> None:
        self.refresh_runs()

    # -- data -------------------------------------------------------------------------------

    def refresh_runs(self) -> None:
        self.runs = list_runs(self.app.runs_dir, self.app.launcher)
        self.rows = []
        for r in self.runs:
            if r.get("stages") is None:
                self.rows.append(Row("run", r, r))
                continue
            self.rows.append(Row("pipeline", r, r))
            if r["dir"] not in self.collapsed:
                self.rows += [Row("stage", s, r) for s in r["stages"]]
        dirs = {row.dir for row in self.rows} | {s["dir"] for r in self.runs for s in r.get("stages") or []}
        self.marked = [m for m in self.marked if m in dirs]
        shown = [self._cells(row, i) for i, row in enumerate(self.rows)]
        self.query_one("#runs-title", Static).update(t("Runs in {folder}", folder=str(self.app.runs_dir)) + f"  ({len(self.runs)})")
        empty = self.query_one("#runs-empty", Static)
        empty.display = not self.runs
        empty.update(t("No runs yet in {folder}. Press n to start one from a recipe or from scratch.", folder=str(self.app.runs_dir)))
        if shown == self._shown:
            return
        self._shown = shown
        table = self.query_one(DataTable)
        current = table.cursor_row
        current_key = self._keys[current] if getattr(self, "_keys", None) and current is not None and current < len(self._keys) else None
        table.clear()
        self._keys = [row.dir for row in self.rows]
        for row, cells in zip(self.rows, shown):
            table.add_row(*cells, key=row.dir)
        if current_key in self._keys:
            table.move_cursor(row=self._keys.index(current_key))
        self._show_detail()
        self.refresh_bindings()

    def _cells(self, row: Row, index: int) -> tuple:
        info = row.info
        loss = f"{info['loss']:.4f}" if info.get("loss") is not None else "-"
        mark = "●" if info["dir"] in self.marked else " "
        if row.kind == "stage":
            last = index + 1 >= len(self.rows) or self.rows[index + 1].kind != "stage"
            name = Text(("└ " if last else "├ ") + info["label"], style="dim" if info["status"] == "pending" else "")
            method = (info.get("method") or "-") + (" lora" if info.get("method") in ("sft", "dpo", "orpo") and not info.get("full") else "")
            return (mark, name, status_text(info["status"]), method, step_text(info), loss, shorten(headline(info), 30), "", fmt_time(info.get("started")))
        if row.kind == "pipeline":
            arrow = "▸ " if info["dir"] in self.collapsed else "▾ "
            current = next((s for s in info["stages"] if s["label"] == info["current"]), None)
            step = f"{info['step']}/{info['total_steps']}"
            if current is not None and info["status"] != "finished":
                step = f"{current['label']} {step_text(current)}"
            learned = t("{n} stages", n=len(info["stages"])) if info["status"] == "finished" else t("now: {stage}", stage=info["current"] or "-")
            return (mark, Text(arrow + shorten(info["name"], 24), style="bold"), status_text(info["status"]), t("pipeline"), step, loss, learned,
                    shorten(model_label(info.get("model")), 16), fmt_time(info.get("started")))
        return (mark, shorten(info["name"], 26), status_text(info["status"]), info.get("method") or "-", step_text(info), loss,
                shorten(headline(info), 30), shorten(model_label(info.get("model")), 16), fmt_time(info.get("started")))

    def selected(self) -> Row | None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row is None or table.cursor_row >= len(self.rows):
            return None
        return self.rows[table.cursor_row]

    def _show_detail(self) -> None:
        row = self.selected()
        detail = self.query_one("#runs-detail", Static)
        if row is None:
            detail.update("")
            return
        info = row.info
        if info.get("error") and info["status"] == "failed":
            detail.update(Text.assemble((t("Error") + ": ", "bold red"), t(info["error"]) if info["error"] == CRASHED else info["error"]))
        elif row.kind == "pipeline":
            hint = t("enter opens the pipeline, x shows or hides its stages, space marks stages to compare")
            detail.update(Text(f"{info['dir']}  ·  {t('pipeline of {n} stages', n=len(info['stages']))}  ·  {hint}", style="dim"))
        elif row.kind == "stage":
            learned = headline(info) and ", ".join(_learned(info))
            detail.update(Text(f"{info['dir']}  ·  " + (learned or t("enter opens the stage's dashboard, space marks it to compare")), style="dim"))
        else:
            model = info.get("model")
            detail.update(Text(f"{info['dir']}  ·  {model if isinstance(model, str) else model_label(model)}  ·  " + t("enter opens the dashboard, space marks runs to compare"), style="dim"))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Resume, stop and delete appear in the footer only when they apply to the selection."""
        row = self.selected() if self.is_mounted else None
        top = row.top if row else None
        if action == "resume":
            return top is not None and top["status"] in ("stopped", "failed")
        if action == "stop":
            return top is not None and bool(top.get("alive"))
        if action == "delete":
            return top is not None and not top.get("alive")
        return True

    def action_explain(self, action: str) -> None:
        getattr(self, f"action_{action}")()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def _need_row(self) -> Row | None:
        row = self.selected()
        if row is None:
            self.notify(t("No run selected."), severity="warning")
        return row

    # -- actions ----------------------------------------------------------------------------

    def action_open(self) -> None:
        row = self._need_row()
        if row is None:
            return
        if row.kind == "pipeline":
            from smolmac.tui.screens.pipeline import PipelineScreen

            self.app.push_screen(PipelineScreen(row.dir))
            return
        if row.info["status"] == "pending":
            self.notify(t("{name} has not started yet.", name=row.name), severity="warning")
            return
        from smolmac.tui.screens.dashboard import DashboardScreen

        self.app.push_screen(DashboardScreen(row.dir, pipeline_dir=row.top["dir"] if row.kind == "stage" else None))

    def action_new(self) -> None:
        from smolmac.tui.screens.new_run import NewRunScreen

        self.app.push_screen(NewRunScreen())

    def action_expand(self) -> None:
        row = self._need_row()
        if row is None or row.kind == "run":
            return
        top = row.top["dir"]
        self.collapsed ^= {top}
        self.refresh_runs()
        self.query_one(DataTable).move_cursor(row=[r.dir for r in self.rows].index(top))

    def action_resume(self) -> None:
        row = self._need_row()
        if not row:
            return
        top = row.top  # a stage resumes its pipeline, which continues at the unfinished stage
        if not self.app.resume_run(top["dir"], top["name"], top["status"]):
            return
        if row.kind == "run":
            from smolmac.tui.screens.dashboard import DashboardScreen

            self.app.push_screen(DashboardScreen(top["dir"]))
        else:
            from smolmac.tui.screens.pipeline import PipelineScreen

            self.app.push_screen(PipelineScreen(top["dir"]))

    def action_stop(self) -> None:
        row = self._need_row()
        if row:
            self.app.stop_run(row.top["dir"], row.top["name"])

    def action_delete(self) -> None:
        row = self._need_row()
        if not row:
            return
        top = row.top
        if top["alive"]:
            self.app.show_error(t("{name} is still training; stop it (s) before deleting it.", name=top["name"]))
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                try:
                    shutil.rmtree(top["dir"])
                except OSError as e:
                    self.app.show_error(e)
                self.refresh_runs()

        if top.get("stages") is not None:
            title = t("Delete pipeline")
            question = t("Delete the pipeline {dir} with all its {n} stages (their checkpoints, models and adapters)? This cannot be undone.", dir=top["dir"], n=len(top["stages"]))
        else:
            title = t("Delete run")
            question = t("Delete {dir} with its checkpoints and adapter? This cannot be undone.", dir=top["dir"])
        self.app.push_screen(ConfirmDialog(title, question, yes=t("Delete"), danger=True), confirmed)

    def action_mark(self) -> None:
        row = self._need_row()
        if not row:
            return
        if row.kind == "pipeline":
            self.notify(t("Mark its stages (space on a stage row) to compare them."), severity="warning")
            return
        if row.dir in self.marked:
            self.marked.remove(row.dir)
        else:
            self.marked = (self.marked + [row.dir])[-MAX_MARKED:]
        self._shown = None
        self.refresh_runs()

    def action_compare(self) -> None:
        if len(self.marked) < 2:
            self.app.show_error(t("compare: mark two or more runs or stages with the space bar first (marked: {n}).", n=len(self.marked)))
            return
        from smolmac.tui.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen(self.marked))

    def action_chat(self) -> None:
        from smolmac.tui.screens.chat import open_chat

        row = self.selected()
        open_chat(self.app, row.top["dir"] if row else None, stage=row.info.get("label") if row and row.kind == "stage" else None)

    def action_export(self) -> None:
        from smolmac.tui.screens.export import ExportScreen

        row = self.selected()
        self.app.push_screen(ExportScreen(row.dir if row else None))

    def action_inspect(self) -> None:
        from smolmac.tui.screens.inspect import InspectScreen

        row = self.selected()
        self.app.push_screen(InspectScreen(row.top["dir"] if row else None, model=_stage_model(row) if row else None))


def _learned(info: dict) -> list[str]:
    from smolmac.pipeline import learned_parts

    return learned_parts(info.get("metrics")) or [headline(info)]


def _stage_model(row: Row) -> str | None:
    """The label of the model a stage trained (what Look inside opens on), else None."""
    if row.kind != "stage":
        return None
    return row.info["label"]
