"""Runs (home): every run under the runs folder, live; open, resume, stop, delete, compare."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from smolmac.launcher import CRASHED, list_runs
from smolmac.tui.dialogs.confirm import ConfirmDialog
from smolmac.tui.i18n import t
from smolmac.tui.view import fmt_time, model_label, shorten, status_text


class RunsScreen(Screen):
    """The table of runs, refreshed every second while the screen is shown."""

    BINDINGS = [
        Binding("enter", "open", t("Open")),
        Binding("n", "new", t("New run")),
        Binding("r", "resume", t("Resume")),
        Binding("s", "stop", t("Stop")),
        Binding("d", "delete", t("Delete")),
        Binding("space", "mark", t("Mark"), show=False),
        Binding("c", "compare", t("Compare")),
        Binding("t", "chat", t("Chat")),
        Binding("e", "export", t("Export")),
        Binding("q", "app.quit", t("Quit")),
    ]
    AUTO_FOCUS = "#runs"

    def __init__(self):
        super().__init__()
        self.runs: list[dict] = []
        self.marked: list[str] = []
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
        for key, label in (("mark", " "), ("name", t("Run")), ("status", t("Status")), ("method", t("Method")), ("model", t("Model")), ("step", t("Step")), ("loss", t("Loss")), ("started", t("Started"))):
            table.add_column(label, key=key)
        self.refresh_runs()
        self.set_interval(1.0, self.refresh_runs)

    def on_screen_resume(self) -> None:
        self.refresh_runs()

    # -- data -------------------------------------------------------------------------------

    def refresh_runs(self) -> None:
        self.runs = list_runs(self.app.runs_dir, self.app.launcher)
        dirs = {r["dir"] for r in self.runs}
        self.marked = [m for m in self.marked if m in dirs]
        rows = [self._row(r) for r in self.runs]
        self.query_one("#runs-title", Static).update(t("Runs in {folder}", folder=str(self.app.runs_dir)) + f"  ({len(self.runs)})")
        empty = self.query_one("#runs-empty", Static)
        empty.display = not self.runs
        empty.update(t("No runs yet in {folder}. Press n to start one from a recipe or from scratch.", folder=str(self.app.runs_dir)))
        if rows == self._shown:
            return
        self._shown = rows
        table = self.query_one(DataTable)
        current = self.selected()
        table.clear()
        for r, row in zip(self.runs, rows):
            table.add_row(*row, key=r["dir"])
        if current is not None and current["dir"] in dirs:
            table.move_cursor(row=[r["dir"] for r in self.runs].index(current["dir"]))
        self._show_detail()

    def _row(self, r: dict) -> tuple:
        step = f"{r['step']}/{r['total_steps']}" if r.get("total_steps") else str(r["step"] or "-")
        loss = f"{r['loss']:.4f}" if r.get("loss") is not None else "-"
        mark = "●" if r["dir"] in self.marked else " "
        return (mark, shorten(r["name"], 28), status_text(r["status"]), r.get("method") or "-", shorten(model_label(r.get("model")), 22), step, loss, fmt_time(r.get("started")))

    def selected(self) -> dict | None:
        table = self.query_one(DataTable)
        if not self.runs or table.cursor_row is None or table.cursor_row >= len(self.runs):
            return None
        return self.runs[table.cursor_row]

    def _show_detail(self) -> None:
        run = self.selected()
        detail = self.query_one("#runs-detail", Static)
        if run is None:
            detail.update("")
        elif run.get("error"):
            detail.update(Text.assemble((t("Error") + ": ", "bold red"), t(run["error"]) if run["error"] == CRASHED else run["error"]))
        else:
            model = run.get("model")
            detail.update(Text(f"{run['dir']}  ·  {model if isinstance(model, str) else model_label(model)}  ·  " + t("enter opens the dashboard, space marks two runs to compare"), style="dim"))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def _need_run(self) -> dict | None:
        run = self.selected()
        if run is None:
            self.notify(t("No run selected."), severity="warning")
        return run

    # -- actions ----------------------------------------------------------------------------

    def action_open(self) -> None:
        run = self._need_run()
        if run:
            from smolmac.tui.screens.dashboard import DashboardScreen

            self.app.push_screen(DashboardScreen(run["dir"]))

    def action_new(self) -> None:
        from smolmac.tui.screens.new_run import NewRunScreen

        self.app.push_screen(NewRunScreen())

    def action_resume(self) -> None:
        run = self._need_run()
        if not run:
            return
        if run["status"] not in ("stopped", "failed"):
            self.app.show_error(t("{name}: only a stopped or failed run can be resumed; this one is {status}.", name=run["name"], status=t(run["status"])))
            return
        try:
            self.app.launcher.resume(run["dir"])
        except Exception as e:  # a UserError or an OSError from spawning the process
            self.app.show_error(e)
            return
        from smolmac.tui.screens.dashboard import DashboardScreen

        self.app.push_screen(DashboardScreen(run["dir"]))

    def action_stop(self) -> None:
        run = self._need_run()
        if run and self.app.launcher.stop(run["dir"]):
            self.notify(t("Stopping {name}: it saves a checkpoint, then stops.", name=run["name"]))
        elif run:
            self.notify(t("{name} is not running.", name=run["name"]), severity="warning")

    def action_delete(self) -> None:
        run = self._need_run()
        if not run:
            return
        if run["alive"]:
            self.app.show_error(t("{name} is still training; stop it (s) before deleting it.", name=run["name"]))
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                try:
                    shutil.rmtree(run["dir"])
                except OSError as e:
                    self.app.show_error(e)
                self.refresh_runs()

        question = t("Delete {dir} with its checkpoints and adapter? This cannot be undone.", dir=run["dir"])
        self.app.push_screen(ConfirmDialog(t("Delete run"), question, yes=t("Delete"), danger=True), confirmed)

    def action_mark(self) -> None:
        run = self._need_run()
        if not run:
            return
        if run["dir"] in self.marked:
            self.marked.remove(run["dir"])
        else:
            self.marked = (self.marked + [run["dir"]])[-2:]
        self._shown = None
        self.refresh_runs()

    def action_compare(self) -> None:
        if len(self.marked) != 2:
            self.app.show_error(t("compare: mark two runs with the space bar first (marked: {n}).", n=len(self.marked)))
            return
        from smolmac.tui.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen(self.marked))

    def action_chat(self) -> None:
        from smolmac.tui.screens.chat import ChatScreen

        run = self.selected()
        model = run.get("model") if run else None
        trained = run is not None and (Path(run["dir"], "adapter").is_dir() or Path(run["dir"], "model").is_dir())
        self.app.push_screen(ChatScreen(model=model if isinstance(model, str) else None, run_dir=run["dir"] if trained else None))

    def action_export(self) -> None:
        from smolmac.tui.screens.export import ExportScreen

        run = self.selected()
        self.app.push_screen(ExportScreen(run["dir"] if run else None))
