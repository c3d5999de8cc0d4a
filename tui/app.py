"""The smolmac app: runs, new run, live dashboard, chat and compare, export.

    smolmac                 # or `smolmac tui`
    python -m smolmac.tui.app --runs runs --recipes recipes

Screens live in tui/screens/, widgets in tui/widgets/, modals in tui/dialogs/. Training runs are
child processes (tui/runner.py) whose events.jsonl the screens tail; chat and export run in
thread workers that post messages back (tui/messages.py).
"""

from __future__ import annotations

from pathlib import Path

from textual.app import App
from textual.binding import Binding

from smolmac.launcher import Launcher, list_runs
from smolmac.storage import lock_owner
from smolmac.tui.dialogs.confirm import ConfirmDialog
from smolmac.tui.dialogs.error import ErrorDialog, describe_error
from smolmac.tui.i18n import t


def cached_models() -> list[str]:
    """Model repos in the Hugging Face cache (empty when there is no cache)."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # no cache dir, unreadable cache: nothing to list
        return []
    return sorted(r.repo_id for r in info.repos if r.repo_type == "model")


class SmolmacApp(App):
    """The app. Tests build it with fakes: a launcher, a chat backend, a fixed memory size.

    Args:
        runs_dir: folder of run directories.
        recipes_dir: folder of recipe YAML files offered by New run.
        launcher: starts/stops runs (default: child processes, see runner.Launcher).
        chat_backend: loads models and streams replies (default: chat_backend.MLXChatBackend).
        memory_gb: memory available to a run (default: smolmac.memory.budget_gb(), this machine's).
        list_models: returns the Hub ids offered for the model field (default: the HF cache).
    """

    CSS_PATH = "app.tcss"
    TITLE = "smolmac"
    SUB_TITLE = t("make a small language model your own") + " · " + t("F1 every key")
    BINDINGS = [
        Binding("ctrl+q", "quit", t("Quit"), show=False, priority=True),
        Binding("f1", "help", t("Keys"), show=False),
    ]

    def __init__(self, runs_dir: str | Path = "runs", recipes_dir: str | Path = "recipes", launcher=None,
                 chat_backend=None, memory_gb: float | None = None, list_models=None):
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.recipes_dir = Path(recipes_dir)
        self.launcher = launcher or Launcher()
        if chat_backend is None:
            from smolmac.tui.chat_backend import MLXChatBackend

            chat_backend = MLXChatBackend()
        self.chat_backend = chat_backend
        self.memory_gb = memory_gb
        self.list_models = list_models or cached_models

    def on_mount(self) -> None:
        from smolmac.tui.screens.runs import RunsScreen

        self.push_screen(RunsScreen())

    def show_error(self, error: BaseException | str, title: str | None = None) -> None:
        """Show an error modal with its one-sentence message."""
        self.push_screen(ErrorDialog(error if isinstance(error, str) else describe_error(error), title))

    def stop_run(self, run_dir: Path, name: str) -> None:
        """Ask a run (or a pipeline) to checkpoint and stop, and say what happened."""
        if self.launcher.stop(run_dir):
            self.notify(t("Stopping {name}: it saves a checkpoint, then stops.", name=name))
        else:
            self.notify(t("{name} is not running.", name=name), severity="warning")

    def resume_run(self, run_dir: Path, name: str, status: str | None) -> bool:
        """Resume a stopped or failed run (a pipeline continues at its unfinished stage); otherwise
        show why not and return False."""
        if self.launcher.alive(run_dir):
            self.show_error(t("{name} is still being trained by process {pid}; stop it (s) or wait for it to finish before resuming.", name=name, pid=lock_owner(run_dir) or "?"))
            return False
        if status not in ("stopped", "failed"):
            self.show_error(t("{name}: only a stopped or failed run can be resumed; this one is {status}.", name=name, status=t(status or "new")))
            return False
        try:
            self.launcher.resume(run_dir)
        except Exception as e:  # a UserError, or an OSError from spawning the process
            self.show_error(e)
            return False
        return True

    def running_runs(self) -> list[dict]:
        return [r for r in list_runs(self.runs_dir, self.launcher) if r["alive"]]

    async def action_quit(self) -> None:
        running = self.running_runs()
        if not running:
            self.exit()
            return
        names = ", ".join(r["name"] for r in running)
        question = t("{n} run(s) still training: {names}. They keep running after the app closes; reopen smolmac to watch them.", n=len(running), names=names)

        def answer(quit_: bool | None) -> None:
            if quit_:
                self.exit()

        self.push_screen(ConfirmDialog(t("Quit smolmac?"), question, yes=t("Quit")), answer)

    def action_help(self) -> None:
        """Show or hide the panel of every key of the screen (the footer holds what fits)."""
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()


def run_app(runs_dir: str = "runs", recipes_dir: str = "recipes") -> None:
    """Open the app (what `smolmac` and `smolmac tui` call)."""
    SmolmacApp(runs_dir=runs_dir, recipes_dir=recipes_dir).run()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="The smolmac app.")
    parser.add_argument("--runs", default="runs", help="Runs folder (default runs/).")
    parser.add_argument("--recipes", default="recipes", help="Recipes folder (default recipes/).")
    args = parser.parse_args()
    run_app(args.runs, args.recipes)
