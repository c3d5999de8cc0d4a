"""New run: a recipe (yours in recipes/, one shipped with smolmac, or from scratch) as a form,
with a data preview, a memory estimate, the stages of a pipeline (add, remove, reorder, edit),
Save as recipe and Start (which launches `smolmac train` and opens the dashboard).

Every change is validated with smolmac.config (the same code that validates recipe files);
data preview and memory estimate run in thread workers and post their results back.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import yaml
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.suggester import SuggestFromList
from textual.widgets import (
    Footer,
    Header,
    Input,
    Label,
    Select,
    Static,
    Switch,
    TabbedContent,
    TabPane,
)

from smolmac import config as C
from smolmac.launcher import RECIPE_FILE
from smolmac.methods import METHODS
from smolmac.tui.dialogs.confirm import ConfirmDialog
from smolmac.tui.dialogs.prompt import PromptDialog
from smolmac.tui.i18n import t
from smolmac.tui.messages import MemoryReady, ModelsListed, PreviewReady
from smolmac.tui.widgets.config_form import (
    SPECS,
    FieldRow,
    check,
    minimal,
    read_widget,
    values_of,
    write_widget,
)
from smolmac.tui.widgets.stages import StagesEditor

SETUP_KEYS = ("name", "model", "method", "full", "data.train", "data.valid", "train.steps", "train.epochs", "train.batch_size", "train.lr", "lora.rank")
LABELS = {"name": "run name", "data.train": "training data", "data.valid": "validation data"}
PREVIEW_KEYS = {"model", "method", "data.train", "data.format", "data.columns", "data.config", "data.split", "tokenizer.path", "train.max_seq_len"}


def section_visible(section: str, values: dict) -> bool:
    """Which sections matter for the chosen method (the others keep their defaults)."""
    m = METHODS.get(values.get("method"))
    if m is None:
        return True
    if section == "lora":
        return not values.get("full") and m.trains and not m.full
    if section == "tokenizer":
        return m.section == "tokenizer" or m.full or isinstance(values.get("model"), dict)
    if any(other.section == section for other in METHODS.values()):
        return m.section == section
    return True


def safe_name(name: str) -> str:
    """A run or file name without spaces or path separators."""
    return re.sub(r"[^\w.-]+", "-", name).strip("-") or "run"


def recipe_text(cfg: C.Config, path: str | Path) -> str:
    """A commented recipe file holding the keys that differ from the defaults."""
    head = f"# {cfg.name or cfg.method}: {t('made with the smolmac app')}.\n# {t('Run it with')}: smolmac train {path}\n"
    return head + yaml.safe_dump(minimal(cfg), sort_keys=False, allow_unicode=True)


class NewRunScreen(Screen):
    """The New run form."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", t("Back")),
        Binding("ctrl+r", "start", t("Start"), priority=True),
        Binding("ctrl+s", "save", t("Save"), priority=True),
        Binding("ctrl+t", "next_tab", t("Tab"), priority=True),
        Binding("ctrl+l", "preview", t("Preview"), priority=True),
    ]
    TABS = ("tab-setup", "tab-stages", "tab-data", "tab-settings")

    AUTO_FOCUS = "#recipe"

    def __init__(self, recipe: str | Path | None = None):
        super().__init__()
        self.initial_recipe = str(recipe) if recipe else None
        self.extra: dict = {}  # recipe keys the form does not edit (pipeline stages)
        self.cfg: C.Config | None = None
        self._debounce: dict = {}
        self.preview: dict | None = None  # the last data preview shown

    # -- layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="new-tabs"):
            with TabPane(t("Setup"), id="tab-setup"), VerticalScroll():
                with Horizontal(classes="field-row"):
                    yield Label(t("recipe"))
                    yield Select(self._recipe_options(), value="", allow_blank=False, id="recipe", compact=True)
                for key in SETUP_KEYS:
                    yield FieldRow(key, t(LABELS.get(key, key)))
                    if key == "model":
                        yield Static(id="models-hint", classes="hint")
            with TabPane(t("Stages"), id="tab-stages"), VerticalScroll():
                yield StagesEditor(id="stages")
            with TabPane(t("Data"), id="tab-data"), VerticalScroll():
                yield Static(t("Choose the training data on the Setup tab; local files are previewed as you type, Hub datasets with Ctrl+L."), id="preview-summary")
                yield Static(id="preview-rows")
                yield Static(id="preview-example")
            with TabPane(t("Settings"), id="tab-settings"), VerticalScroll():
                yield from self._settings()
        yield Static(id="help", classes="help")
        yield Static(id="problem")
        yield Static(id="memory")
        yield Footer(compact=True)

    def _recipe_options(self) -> list[tuple[str, str]]:
        """Your recipes (recipes_dir), then the ones shipped with smolmac; pipelines marked."""
        options = [(t("from scratch"), "")]
        for r in C.list_recipes(self.app.recipes_dir):
            mark = " · " + t("pipeline") if r["pipeline"] else ""
            options.append((r["name"] + mark + ("" if r["shipped"] else " · " + t("yours")), r["path"]))
        return options

    def _settings(self) -> ComposeResult:
        general = [k for k in SPECS if "." not in k and k not in SETUP_KEYS]
        with Vertical(id="sec-general", classes="section"):
            yield Static(t("general"), classes="section-title")
            for key in general:
                yield FieldRow(key)
        for section in C.SECTIONS:
            keys = [k for k in SPECS if k.startswith(section + ".") and k not in SETUP_KEYS]
            with Vertical(id=f"sec-{section}", classes="section"):
                yield Static(Text.assemble((section, "bold"), "  ", (t(C.Config.__dataclass_fields__[section].metadata["help"]), "dim")), classes="section-title")
                for key in keys:
                    yield FieldRow(key, key.split(".", 1)[1])

    def on_mount(self) -> None:
        self.query_one("#models-hint", Static).update(Text(t("looking for models in the Hugging Face cache…"), style="dim"))
        self.list_models()
        if self.initial_recipe:
            self.query_one("#recipe", Select).value = self.initial_recipe
        self.revalidate()
        self.schedule("memory", 0.1, self.request_memory)

    # -- reading and validating the form ----------------------------------------------------

    def fields(self) -> dict:
        return {w.field_key: w for w in self.query(".field")}

    def values(self) -> dict:
        return {key: read_widget(w) for key, w in self.fields().items()}

    def revalidate(self) -> C.Config | None:
        values = self.values()
        cfg, message, key = check(values, self.extra)
        for w in self.fields().values():
            w.set_class(w.field_key == key, "-bad")
        problem = self.query_one("#problem", Static)
        if cfg is None:
            problem.update(Text.assemble(("✗ ", "bold red"), (message, "red")))
        else:
            note = "  " + t("pipeline of {n} stages (Stages tab)", n=len(cfg.stages)) if cfg.stages else ""
            problem.update(Text.assemble(("✓ ", "bold green"), (t("valid recipe"), "green"), (note, "dim")))
        self.query_one(StagesEditor).show_problem(message if key == "stages" else None)
        for section in ["lora", "dpo", "orpo", "tokenizer"]:
            self.query_one(f"#sec-{section}").display = section_visible(section, values)
        self.query_one("#f-lora-rank").parent.display = section_visible("lora", values)
        if cfg is None:
            self.query_one("#memory", Static).update(Text(t("Memory") + ": " + t("estimated once the recipe is valid"), style="dim"))
        self.cfg = cfg
        return cfg

    def schedule(self, name: str, delay: float, callback) -> None:
        """Debounce: run `callback` once typing pauses for `delay` seconds."""
        if name in self._debounce:
            self._debounce[name].stop()
        self._debounce[name] = self.set_timer(delay, callback)

    def _changed(self, key: str | None) -> None:
        cfg = self.revalidate()
        if cfg is None:
            return
        self.schedule("memory", 0.5, self.request_memory)
        if key in PREVIEW_KEYS and cfg.data.train and Path(cfg.data.train).expanduser().exists():
            self.schedule("preview", 0.5, self.request_preview)

    def on_input_changed(self, event: Input.Changed) -> None:
        if hasattr(event.input, "field_key"):
            self._changed(event.input.field_key)

    def on_switch_changed(self, event: Switch.Changed) -> None:
        self._changed(getattr(event.switch, "field_key", None))

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "recipe":
            self.load_recipe(event.value)
        else:
            self._changed(getattr(event.select, "field_key", None))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if getattr(event.input, "field_key", None) in ("data.train", "model"):
            self.action_preview()

    def on_stages_editor_changed(self, event: StagesEditor.Changed) -> None:
        self.extra = {"stages": event.stages} if event.stages else {}
        self._changed("stages")

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Preview belongs to the data: hidden on the Stages tab (the footer keeps its keys)."""
        if action == "preview" and self.is_mounted:
            return self.query_one(TabbedContent).active != "tab-stages"
        return True

    def on_descendant_focus(self, event) -> None:
        widget = event.widget
        key = getattr(widget, "field_key", None) or getattr(widget.parent, "field_key", None)
        if widget.id == "recipe":
            self.query_one("#help", Static).update(Text.assemble((t("recipe"), "bold"), ": ", t("start from one of your recipes ({folder}), one shipped with smolmac, or from scratch; Ctrl+T switches tabs.", folder=str(self.app.recipes_dir))))
        elif key:
            spec = SPECS[key]
            default = "" if spec.default is None else f"  ({t('default')}: {spec.default!r})"
            valid = f"  [{t('accepts')}: {spec.valid}]" if spec.valid and not spec.choices else ""
            self.query_one("#help", Static).update(Text.assemble((key, "bold"), ": ", t(spec.help), (default, "dim"), (valid, "dim")))

    def load_recipe(self, path: str) -> None:
        """Fill the form from a recipe file ('' = defaults)."""
        try:
            cfg = C.load_recipe(path) if path else C.Config()
        except Exception as e:  # a broken recipe file: say why, keep the form as it is
            self.app.show_error(e)
            return
        self.extra = {"stages": cfg.stages} if cfg.stages else {}
        self.query_one(StagesEditor).set_stages(cfg.stages)
        fields = self.fields()
        for key, value in values_of(cfg).items():
            if key in fields:
                write_widget(fields[key], value)
        self.call_after_refresh(self._changed, "data.train")

    # -- workers ----------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="models", exit_on_error=False)
    def list_models(self) -> None:
        self.post_message(ModelsListed(self.app.list_models()))

    def on_models_listed(self, message: ModelsListed) -> None:
        hint = self.query_one("#models-hint", Static)
        model_input = self.query_one("#f-model", Input)
        model_input.placeholder = t("Hub id or local folder, e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
        if message.models:
            model_input.suggester = SuggestFromList(message.models, case_sensitive=False)
            shown = ", ".join(message.models[:4]) + (" …" if len(message.models) > 4 else "")
            hint.update(Text(t("In the Hugging Face cache ({n}, type to complete): {names}", n=len(message.models), names=shown), style="dim"))
        else:
            hint.update(Text(t("No models in the Hugging Face cache yet; a Hub id is downloaded when the run starts."), style="dim"))

    def request_memory(self) -> None:
        if self.cfg is not None:
            self.estimate_memory(self.cfg)

    @work(thread=True, exclusive=True, group="memory", exit_on_error=False)
    def estimate_memory(self, cfg: C.Config) -> None:
        from smolmac.memory import verdict

        try:
            est = verdict(cfg, budget=self.app.memory_gb)
        except Exception as e:  # an unreadable config.json must not break the form
            self.post_message(MemoryReady(None, str(e)))
            return
        self.post_message(MemoryReady(est, "" if est else t("the memory estimate needs the model's config.json (a local folder, or a Hub id already in the cache)")))

    def on_memory_ready(self, message: MemoryReady) -> None:
        est = message.estimate
        widget = self.query_one("#memory", Static)
        if est is None:
            widget.update(Text(t("Memory") + ": " + (message.note or "-"), style="dim"))
            return
        parts = " · ".join(f"{t(k)} {v:.2f}" for k, v in est.parts.items())
        verdict = ("✓ ", "bold green") if est.fits else ("⚠ ", "bold yellow")
        line = Text.assemble(verdict, (t("Memory") + " ", "bold"), f"≈ {est.total_gb:.2f} GB ", t("of {budget:.1f} GB", budget=est.budget_gb), (f"  ({parts} GB)" if parts else "", "dim"))
        if est.plan is not None:
            from smolmac.memory import AUTO_PLAN

            line.append("\n" + t(AUTO_PLAN, **est.plan.values()), style="cyan" if est.plan.fits else "yellow")
        if not est.fits:
            line.append("\n" + t("probably too much for this machine; try:") + " " + "; ".join(t(s, **v) for s, v in est.suggestions), style="yellow")
        widget.update(line)

    def request_preview(self) -> None:
        if self.cfg is not None and self.cfg.data.train:
            self.query_one("#preview-summary", Static).update(Text(t("reading {source}…", source=self.cfg.data.train), style="dim"))
            self.load_preview(self.cfg)

    def action_preview(self) -> None:
        cfg = self.revalidate()
        if cfg is None or not cfg.data.train:
            self.notify(t("Set a valid training data first."), severity="warning")
            return
        self.request_preview()

    @work(thread=True, exclusive=True, group="preview", exit_on_error=False)
    def load_preview(self, cfg: C.Config) -> None:
        from smolmac.tui.preview import load_preview

        try:
            preview = load_preview(cfg)
        except Exception as e:  # a UserError about the data, shown in the Data tab
            from smolmac.tui.dialogs.error import describe_error

            preview = {"error": describe_error(e), "source": cfg.data.train}
        self.post_message(PreviewReady(preview))

    def on_preview_ready(self, message: PreviewReady) -> None:
        self.preview = p = message.preview
        summary = self.query_one("#preview-summary", Static)
        rows = self.query_one("#preview-rows", Static)
        example = self.query_one("#preview-example", Static)
        if "error" in p:
            summary.update(Text.assemble(("✗ ", "bold red"), p["error"]))
            rows.update("")
            example.update("")
            return
        summary.update(Text.assemble((t("Format") + ": ", "bold"), (p["kind"], "bold cyan"), f"  ·  {t('{n} rows', n=p['rows'])}  ·  {p['source']}"))
        shown = Text()
        for i, row in enumerate(p["head"], 1):
            line = json.dumps(row, ensure_ascii=False)
            shown.append(f"{i}  ", style="dim")
            shown.append((line[:300] + " …" if len(line) > 300 else line) + "\n")
        rows.update(shown)
        if p["example"] is None:
            example.update(Text(p["note"], style="dim"))
            return
        legend = Text.assemble("\n", (t("Training example (row 1)") + ": ", "bold"), (t("trained"), "bold black on #5fd75f"), " ", (t("masked"), "dim"),
                               f"  ·  {t('{n} tokens, {m} trained', n=p['tokens'], m=p['trained'])}\n")
        if p["note"]:
            legend.append(p["note"] + "\n", style="yellow")
        example.update(legend + p["example"])

    # -- actions ----------------------------------------------------------------------------

    def action_next_tab(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = self.TABS[(self.TABS.index(tabs.active) + 1) % len(self.TABS)]

    def _valid_config(self) -> C.Config | None:
        cfg = self.revalidate()
        if cfg is None:
            _, message, _ = check(self.values(), self.extra)
            self.app.show_error(message)
            return None
        if not cfg.data.train and not cfg.stages and not (cfg.method == "tokenizer" and cfg.tokenizer.data):
            self.app.show_error(t("data.train: choose the training data (a file, a folder or a Hub dataset id) on the Setup tab."))
            return None
        return cfg

    def action_start(self) -> None:
        cfg = self._valid_config()
        if cfg is None:
            return
        name = safe_name(cfg.name or cfg.method)
        cfg.name = name
        run_dir = self.app.runs_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 2
        while run_dir.exists():
            run_dir = run_dir.with_name(f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
            n += 1
        try:
            run_dir.mkdir(parents=True)
            recipe = run_dir / RECIPE_FILE
            recipe.write_text(recipe_text(cfg, recipe), encoding="utf-8")
            self.app.launcher.start(recipe, run_dir)
        except Exception as e:  # OSError from the folder or from spawning the process
            self.app.show_error(e)
            return
        if cfg.stages:  # a pipeline: its stages' dashboard
            from smolmac.tui.screens.pipeline import PipelineScreen

            self.app.switch_screen(PipelineScreen(run_dir))
            return
        from smolmac.tui.screens.dashboard import DashboardScreen

        self.app.switch_screen(DashboardScreen(run_dir))

    def action_save(self) -> None:
        cfg = self._valid_config()
        if cfg is None:
            return
        default = self.app.recipes_dir / (safe_name(cfg.name or cfg.method) + ".yaml")

        def write(path: str | None) -> None:
            if not path:
                return
            target = Path(path).expanduser()

            def really(yes: bool | None) -> None:
                if not yes:
                    return
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(recipe_text(cfg, target), encoding="utf-8")
                except OSError as e:
                    self.app.show_error(e)
                    return
                self.notify(t("Saved {path}", path=str(target)))

            if target.exists():
                self.app.push_screen(ConfirmDialog(t("Overwrite?"), t("{path} exists; replace it?", path=str(target)), yes=t("Replace")), really)
            else:
                really(True)

        self.app.push_screen(PromptDialog(t("Save as recipe"), str(default), t("Run it later with: smolmac train PATH")), write)
