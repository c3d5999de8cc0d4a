"""The app's chat with several adapters on one base: one column per adapter plus the base, the
base loaded once, adapters attached and dropped as the adapters field changes (a fake backend),
and the real MLX backend giving each column what `smolmac.load(...).chat` gives."""

from __future__ import annotations

import threading

from test_tui import SIZE, FakeChat, _render, make_app, wait_for

from smolmac.tui.screens.chat import ChatScreen, Transcript


async def send(pilot, screen, text):
    screen.query_one("#chat-prompt").value = text
    await pilot.press("enter")
    await wait_for(pilot, lambda: screen.pending == 0)


def replies(screen) -> dict:
    return {pane.side: pane.messages[-1]["content"] for pane in screen.query(Transcript) if pane.display and pane.messages}


async def test_one_column_per_adapter_and_the_base_loaded_once(tmp_path):
    chat = FakeChat()
    app = make_app(tmp_path, chat=chat)
    async with app.run_test(size=SIZE) as pilot:
        await app.push_screen(ChatScreen(model="org/base", run_dir="math=runs/a, style=runs/b"))
        await pilot.pause()
        screen = app.screen
        assert [(p.side, p.border_title) for p in screen.query(Transcript)] == [
            ("base", "base model"), ("adapter", "adapter math"), ("adapter-2", "adapter style")]
        await send(pilot, screen, "hello")
        assert replies(screen) == {"base": "base says: hello (turn 1) ", "adapter": "math says: hello (turn 1) ", "adapter-2": "style says: hello (turn 1) "}
        assert "base 12.50 MB · math 0.25 MB · style 0.25 MB" in _render(app)

        # a third adapter, one that does not fit: only its column fails; the base is not reloaded
        screen.query_one("#chat-run").value = "math=runs/a, style=runs/b, bad=runs/broken"
        await send(pilot, screen, "again")
        got = replies(screen)
        assert got["adapter"] == "math says: again (turn 2) " and got["adapter-2"] == "style says: again (turn 2) "
        assert "'bad'" in screen.query_one("#pane-adapter-3", Transcript).query("Static").last().render().plain
        assert chat.loads == ["org/base"] and chat.attached == [("math", "runs/a"), ("style", "runs/b")]

        # drop style, switch math to another run: its column starts afresh; adapters only mode
        screen.query_one("#chat-run").value = "math=runs/c"
        screen.query_one("#chat-mode").value = "adapter"
        await pilot.pause()
        await send(pilot, screen, "third")
        assert replies(screen) == {"adapter": "math says: third (turn 1) "}
        assert [p.side for p in screen.query(Transcript)] == ["base", "adapter"]
        assert chat.loads == ["org/base"] and chat.attached[-1] == ("math", "runs/c")
        assert len(chat.threads) == 1 and threading.get_ident() not in chat.threads

        screen.query_one("#chat-run").value = "x=runs/a, x=runs/b"
        screen.query_one("#chat-prompt").value = "four"
        await pilot.press("enter")
        await pilot.pause()
        assert type(app.screen).__name__ == "ErrorDialog" and "used twice" in app.screen.message


async def test_real_backend_columns_equal_the_python_api(tmp_path, tiny_tokenizer):
    from test_export import make_run  # noqa: I001

    import smolmac
    from smolmac.models import new_model
    from smolmac.tui.chat_backend import MLXChatBackend

    # init std 0.2: replies of a few tokens differ between the base and each adapter
    tiny_model = new_model({"preset": "nano", "initializer_range": 0.2}, tiny_tokenizer, tmp_path / "base", seed=0)
    a, _ = make_run(tmp_path / "a", tiny_model, {"targets": "all-linear", "layers": "all", "dora": False}, seed=1)
    b, _ = make_run(tmp_path / "b", tiny_model, {"targets": ["q_proj", "v_proj"], "layers": 1, "dora": True, "rank": 8}, seed=2)
    app = make_app(tmp_path, chat=MLXChatBackend())
    async with app.run_test(size=SIZE) as pilot:
        await app.push_screen(ChatScreen(model=str(tiny_model), run_dir=f"lora={a}, dora={b}"))
        await pilot.pause()
        screen = app.screen
        screen.query_one("#chat-max").value = "8"
        await send(pilot, screen, "reverse: cat dog")
        got = replies(screen)
    m = smolmac.load(str(tiny_model), {"lora": a, "dora": b})
    messages = [{"role": "user", "content": "reverse: cat dog"}]
    want = {"base": m.chat(messages, max_tokens=8, adapter=None), "adapter": m.chat(messages, max_tokens=8, adapter="lora"),
            "adapter-2": m.chat(messages, max_tokens=8, adapter="dora")}
    assert got == want and len(set(want.values())) == 3, (got, want)
