"""--format ollama: a folder with the GGUF file (export/gguf_file.py) and a Modelfile, so that

    ollama create my-model -f out/x-ollama/Modelfile && ollama run my-model

works. Ollama does not run the Jinja chat template stored in the GGUF file: its Modelfile TEMPLATE
is a Go template. smolmac translates the two families whose turns it can write exactly, ChatML
(smolmac's own tokenizers, SmolLM2, Qwen2/2.5/3) and Llama 3, and proves the translation by
rendering probe conversations with the Hugging Face template and with a Python rendering of the
Go template: they must be equal, character for character, or the export is refused with the
first difference. A default system prompt of the template (Qwen's, SmolLM2's) becomes SYSTEM.
"""

from __future__ import annotations

from pathlib import Path

from smolmac.errors import UserError

# style: (turn start, text after the role, end of turn, the Go template); a turn renders as
# start + role + after_role + content + end
STYLES = {
    "chatml": ("<|im_start|>", "\n", "<|im_end|>\n", """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ range .Messages }}{{ if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
<|im_start|>assistant
{{ else if eq .Role "assistant" }}{{ .Content }}<|im_end|>
{{ end }}{{ end }}"""),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>", """{{ if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{ range .Messages }}{{ if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|><|start_header_id|>assistant<|end_header_id|>

{{ else if eq .Role "assistant" }}{{ .Content }}<|eot_id|>{{ end }}{{ end }}"""),
}
PROBES = [
    [("user", "U1")],
    [("system", "S1"), ("user", "U1")],
    [("user", "U1"), ("assistant", "A1"), ("user", "U2")],
    [("system", "S1"), ("user", "U1"), ("assistant", "A1"), ("user", "U2")],
]


def go_render(style: str, system: str | None, messages: list[tuple[str, str]]) -> str:
    """What Ollama renders with STYLES[style]'s template: system messages are collected into
    .System (or the Modelfile's SYSTEM when there are none), the others go through .Messages."""
    start, after, end, _ = STYLES[style]
    given = [c for r, c in messages if r == "system"]
    system = "\n\n".join(given) if given else system
    text = f"{start}system{after}{system}{end}" if system else ""
    for role, content in messages:
        if role == "user":
            text += f"{start}user{after}{content}{end}{start}assistant{after}"
        elif role == "assistant":
            text += f"{content}{end}"
    return text


def _hf_render(hf_tok, messages) -> str:
    text = hf_tok.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False, add_generation_prompt=True)
    bos = hf_tok.bos_token
    # the BOS text a template writes is the token llama.cpp/Ollama add themselves (add_bos_token)
    if bos and text.startswith(bos) and hf_tok("a")["input_ids"][:1] == [hf_tok.bos_token_id]:
        text = text[len(bos):]
    return text


def translate(hf_tok) -> dict | None:
    """{"style", "template", "system", "stop"} for a chat template smolmac can write as a Go
    template; None without a chat template; UserError (with the first difference) otherwise."""
    if not getattr(hf_tok, "chat_template", None):
        return None
    try:
        rendered = [_hf_render(hf_tok, p) for p in PROBES]
    except Exception as e:  # a template that rejects a probe (e.g. no system role) is not ChatML/Llama 3
        raise UserError(f"--format ollama: the chat template fails on a {'/'.join(r for r, _ in PROBES[1])} conversation ({e}); smolmac translates only ChatML and Llama 3 templates to an Ollama TEMPLATE.") from None
    for style, (start, after, end, template) in STYLES.items():
        if start not in rendered[0]:
            continue
        # text before the first turn that the template always writes (a BOS the tokenizer does not add)
        prefix = rendered[0][: rendered[0].index(start)]
        if not all(r.startswith(prefix) for r in rendered):
            continue
        rendered = [r[len(prefix):] for r in rendered]
        default = None
        head = f"{start}system{after}"
        if rendered[0].startswith(head):  # a system turn nobody gave: the template's default
            default = rendered[0][len(head):].split(end, 1)[0]
        expected = [go_render(style, default, p) for p in PROBES]
        if expected == rendered:
            stop = [end.strip(), start]
            return {"style": style, "template": prefix + template, "system": default, "stop": stop}
        i = next(i for i, (a, b) in enumerate(zip(expected, rendered)) if a != b)
        at = next((k for k, (x, y) in enumerate(zip(expected[i], rendered[i])) if x != y), min(len(expected[i]), len(rendered[i])))
        raise UserError(f"--format ollama: the chat template looks like {style} but renders a {'/'.join(r for r, _ in PROBES[i])} conversation as {rendered[i][max(0, at - 20):at + 30]!r} where {style} has {expected[i][max(0, at - 20):at + 30]!r}; smolmac writes an Ollama TEMPLATE only when it renders identically.")
    raise UserError(f"--format ollama: the chat template renders {rendered[0][:60]!r}, which is neither ChatML nor Llama 3; smolmac translates only those to an Ollama TEMPLATE (use --format gguf, whose chat template llama.cpp and LM Studio apply).")


def _quoted(text: str) -> str:
    if '"""' in text:
        raise UserError('--format ollama: the text contains """, which a Modelfile cannot quote.')
    return f'"""{text}"""'


def modelfile(gguf_name: str, chat: dict | None, context: int | None) -> str:
    """The Modelfile: FROM the GGUF next to it, TEMPLATE, SYSTEM, stop tokens, context length."""
    lines = ["# made by smolmac export --format ollama: ollama create NAME -f Modelfile", f"FROM ./{gguf_name}", ""]
    if chat:
        lines.append(f"TEMPLATE {_quoted(chat['template'])}")
        if chat["system"]:
            lines.append(f"SYSTEM {_quoted(chat['system'])}")
        lines += [f'PARAMETER stop "{s}"' for s in chat["stop"]]
    if context:
        lines.append(f"PARAMETER num_ctx {min(int(context), 8192)}")
    return "\n".join(lines) + "\n"


def write(src, out: Path, dtype: str | None, say, quantize: str | None = None) -> Path:
    from smolmac.data import hf_tokenizer
    from smolmac.export.card import card_info
    from smolmac.export.gguf_file import gguf_type, source_dir, write_gguf
    from smolmac.export.hf import fused_model

    model, tok, config = fused_model(src, say)
    chat = translate(hf_tokenizer(tok))  # before the GGUF is written: refuse early
    if chat is None:
        say("the tokenizer has no chat template: the Modelfile has no TEMPLATE, so Ollama sends prompts as they are.")
    qtype = gguf_type(config, dtype, quantize)
    write_gguf(model, tok, config, out / "model.gguf", qtype, say, card_info(src, "ollama", qtype), source_dir(src))
    (out / "Modelfile").write_text(modelfile("model.gguf", chat, config.get("max_position_embeddings")))
    say("Modelfile: " + (f"{chat['style']} TEMPLATE" + (", default SYSTEM" if chat["system"] else "") if chat else "no TEMPLATE") + ".")
    return out


def usage(info: dict, ref: str, base: str, local: str, fetch: str) -> str:
    return f"""### Ollama

```bash
{fetch}ollama create my-model -f {local}/Modelfile
ollama run my-model "Hello!"
```

### llama.cpp / LM Studio

```bash
llama-cli -m {local}/model.gguf -cnv
```
"""
