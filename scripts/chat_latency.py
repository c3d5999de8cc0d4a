"""Time the app's chat on a pipeline stage, as a user drives it: on the Runs screen, the cursor on
a stage, `t` opens the chat (that stage and the model it started from; the models start loading
at once), a prompt and `enter`; measured until the first token of every column arrives: the
prompt sent at once in a fresh process (imports MLX), the next prompt, the chat reopened with the
prompt sent at once, and a prompt sent once the models have loaded.

    python scripts/chat_latency.py runs/quickstart 3-sft --prompt "What is 7 + 5?"

Uses the real MLX backend through Textual's test pilot (no terminal needed).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path


async def measure(pipeline: Path, stage: str, prompt: str, max_tokens: int) -> dict:
    import smolmac  # noqa: F401  (the optimised BLAS before mlx)
    from smolmac.launcher import Launcher
    from smolmac.tui.app import SmolmacApp
    from smolmac.tui.screens.chat import ChatScreen

    first: dict = {}  # side -> when its first piece reached the screen
    original = ChatScreen.on_chat_piece

    def on_piece(self, message) -> None:  # Textual dispatches on the class: wrap the handler there
        first.setdefault(message.side, time.perf_counter())
        original(self, message)

    ChatScreen.on_chat_piece = on_piece

    app = SmolmacApp(runs_dir=pipeline.parent, recipes_dir=pipeline.parent / "recipes", launcher=Launcher(), memory_gb=16, list_models=lambda: [])
    out = {}
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        runs = app.screen

        async def open_chat() -> tuple:
            runs.query_one("#runs").move_cursor(row=[r.dir for r in runs.rows].index(str(pipeline / stage)))
            t0 = time.perf_counter()
            await pilot.press("t")
            while type(app.screen).__name__ != "ChatScreen" or not app.screen.query("#chat-prompt"):
                await pilot.pause(0.01)
            app.screen.query_one("#chat-max").value = str(max_tokens)
            return app.screen, t0

        async def send(chat, since: float) -> dict:
            first.clear()
            chat.query_one("#chat-prompt").value = prompt
            chat.query_one("#chat-prompt").focus()
            await pilot.press("enter")
            while chat.pending:
                await pilot.pause(0.01)
            return {"first_token_s": {side: round(t - since, 3) for side, t in first.items()}, "all_replies_s": round(time.perf_counter() - since, 3),
                    "columns": [p.border_title for p in chat.query("Transcript") if p.display]}

        # 1. t on the stage, then the prompt at once: this process imports MLX and loads the models.
        chat, t0 = await open_chat()
        out["chat_open_s"] = round(time.perf_counter() - t0, 3)
        out["t_then_prompt_at_once"] = await send(chat, t0)
        t0 = time.perf_counter()
        out["next_prompt"] = await send(chat, t0)
        app.pop_screen()
        # 2. reopened (imports done): prompt at once, and prompt once the models are loaded.
        chat, t0 = await open_chat()
        out["reopened_prompt_at_once"] = await send(chat, t0)
        app.pop_screen()
        chat, t0 = await open_chat()
        while "MB" not in str(chat.query_one("#chat-status").render()):  # loaded while "typing"
            await pilot.pause(0.01)
        out["models_loaded_after_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        out["prompt_after_loading"] = await send(chat, t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", help="A finished pipeline run dir, e.g. runs/quickstart.")
    parser.add_argument("stage", help="The stage whose chat is timed, e.g. 3-sft.")
    parser.add_argument("--prompt", default="What is 7 + 5?")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    for key, value in asyncio.run(measure(Path(args.pipeline), args.stage, args.prompt, args.max_tokens)).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
