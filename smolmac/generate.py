"""Generation through mlx-lm: load a base model once with any number of named adapters (run
dirs, mlx-lm or PEFT adapter dirs), switch between them per request, and stream a completion for a
prompt (chat-templated when the tokenizer has one).

    import smolmac
    m = smolmac.load("models/base", adapters={"math": "runs/math", "style": "runs/style"})
    m.generate("What is 7 + 5?", adapter="math")   # this request only
    m.use("style"); m.chat([{"role": "user", "content": "Ciao!"}])
    m.use(None)                                     # the base model, exactly

A prompt becomes exactly the tokens training puts before a completion (`prompt_ids`): the chat
template's output as is (the template writes BOS when the model has one), or, untemplated, the
tokenizer's BOS (if it adds one) and the text.
"""

from __future__ import annotations

from pathlib import Path

from smolmac.data import encode_plain, encode_templated, hf_tokenizer
from smolmac.errors import UserError


def load_for_generation(model: str, adapter: str | None = None, dtype: str = "float32", pick: str = "last"):
    """(model, tokenizer) with the adapter applied: an mlx-lm adapter dir, a PEFT adapter dir,
    or a run dir (its adapter/, or its model/ for a full fine-tune).

    Args:
        pick: with a run dir, "last" (adapter/, model/) or "best" (adapter-best/, model-best/:
            the weights of its best evaluation, written by save.best).
    """
    from smolmac.adapters import full_weights, pick_weights
    from smolmac.models import load_model

    adapter = pick_weights(adapter, pick)
    if adapter:
        adapter = str(adapter)
        full = full_weights(adapter)
        if full is not None:  # a full fine-tune: its model/ (or model-best/) is the model
            return load_model(str(full), dtype)[:2]
    if adapter and not Path(adapter).is_dir():
        what = "is a file" if Path(adapter).exists() else "does not exist"
        raise UserError(f"--adapter: {adapter} {what}; point at a run dir or an adapter folder.")
    m, tok, _config, _path = load_model(model, dtype)
    if adapter:
        from smolmac.adapters import attach

        attach(m, adapter)
        m.eval()
    return m, tok


def format_prompt(tokenizer, prompt: str | list, chat: bool | None = None) -> str:
    """Chat-template a user prompt (or a message list) when the tokenizer has a template."""
    hf = hf_tokenizer(tokenizer)
    has_template = bool(getattr(hf, "chat_template", None))
    if chat is False or not has_template:
        if isinstance(prompt, list):
            raise UserError("generate: a message list needs a tokenizer with a chat template.")
        return prompt
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer, prompt: str | list, chat: bool | None = None) -> list[int]:
    """The tokens the model is given for a prompt: the same tokens training puts before a
    completion (smolmac.data: `encode_templated` for chat-templated text, `encode_plain` else).

    Args:
        prompt: a user prompt, or a message list (needs a chat template).
        chat: None = use the chat template when the tokenizer has one; False = raw text.
    """
    text = format_prompt(tokenizer, prompt, chat)
    templated = chat is not False and bool(getattr(hf_tokenizer(tokenizer), "chat_template", None))
    return encode_templated(tokenizer, text) if templated else encode_plain(tokenizer, text)


def stream(model, tokenizer, prompt: str | list, max_tokens: int = 256, temp: float = 0.0, top_p: float = 1.0, chat: bool | None = None):
    """Yield text pieces of a completion (greedy when temp == 0)."""
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    ids = prompt_ids(tokenizer, prompt, chat)
    sampler = make_sampler(temp=temp, top_p=top_p)
    for response in stream_generate(model, tokenizer, ids, max_tokens=max_tokens, sampler=sampler):
        yield response.text


def generate(model, tokenizer, prompt: str | list, max_tokens: int = 256, temp: float = 0.0, chat: bool | None = None) -> str:
    return "".join(stream(model, tokenizer, prompt, max_tokens=max_tokens, temp=temp, chat=chat))


def _mb(n: int) -> float:
    return round(n / 1e6, 3)


class LoadedModel:
    """A base model loaded once, with named adapters switched per request (`smolmac.load`,
    `smolmac generate --adapter NAME=DIR --use NAME`, the app's chat).

    One request at a time: MLX arrays belong to the thread that made them, so use a handle from
    the thread that loaded it. `adapter=` on a request picks the adapter for that request only
    (None: the base; the default, ..., keeps the active one).
    """

    def __init__(self, model, tokenizer, base: str, dtype: str):
        from smolmac.adapters import AdapterSet

        self.model, self.tokenizer, self.base, self.dtype = model, tokenizer, base, dtype
        self.bank = AdapterSet(model)

    def __repr__(self) -> str:
        return f"LoadedModel({self.base!r}, adapters={list(self.bank.adapters)}, active={self.active!r})"

    @property
    def adapters(self) -> dict:
        """{name: Adapter} of the loaded adapters (rank, alpha, dora, modules(), weights)."""
        return dict(self.bank.adapters)

    @property
    def active(self) -> str | None:
        """The active adapter's name, or None for the base model."""
        return self.bank.active

    def add(self, name: str, adapter) -> LoadedModel:
        """Attach another adapter (a run dir, an mlx-lm or PEFT adapter dir, or an Adapter)."""
        self.bank.add(name, adapter)
        return self

    def remove(self, name: str) -> LoadedModel:
        self.bank.remove(name)
        return self

    def use(self, name: str | None) -> LoadedModel:
        """Make adapter `name` active for the next requests; None gives the base model."""
        self.bank.use(name)
        return self

    def stream(self, prompt: str | list, max_tokens: int = 256, temp: float = 0.0, top_p: float = 1.0,
               chat: bool | None = None, adapter=...):
        """Yield the text pieces of a completion (greedy when temp == 0).

        Args:
            prompt: a user message (chat-templated when the tokenizer has a template) or a
                message list.
            chat: False sends `prompt` as plain text even when there is a chat template.
            adapter: the adapter for this request (None: the base; default: the active one).
        """
        with self.bank.using(self.active if adapter is ... else adapter):
            yield from stream(self.model, self.tokenizer, prompt, max_tokens=max_tokens, temp=temp, top_p=top_p, chat=chat)

    def generate(self, prompt: str | list, max_tokens: int = 256, temp: float = 0.0, top_p: float = 1.0,
                 chat: bool | None = None, adapter=...) -> str:
        """The completion of `prompt` as one string (see `stream`)."""
        return "".join(self.stream(prompt, max_tokens, temp, top_p, chat, adapter))

    def chat_stream(self, messages: list[dict], max_tokens: int = 256, temp: float = 0.0, top_p: float = 1.0, adapter=...):
        """Yield the pieces of the assistant's reply to a message list ({role, content} dicts)."""
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise UserError("chat: messages must be a list of {'role': ..., 'content': ...} dicts.")
        yield from self.stream(messages, max_tokens, temp, top_p, None, adapter)

    def chat(self, messages: list[dict], max_tokens: int = 256, temp: float = 0.0, top_p: float = 1.0, adapter=...) -> str:
        """The assistant's reply to a message list, as one string."""
        return "".join(self.chat_stream(messages, max_tokens, temp, top_p, adapter))

    def combine(self, names: list[str], weights, method: str = "svd", rank: int | None = None, name: str | None = None) -> str:
        """Combine loaded adapters into a new one (PEFT's add_weighted_adapter; smolmac.combining)
        and attach it under `name` (default "a+b"); returns the name. Export it with
        `smolmac.export(handle.use(name), format="peft", to=...)`.
        """
        from smolmac.combining import combine

        for n in names:
            self.bank.require(n)
        name = name or "+".join(names)
        ad = combine({n: self.bank.adapters[n] for n in names}, weights, method, rank)
        self.bank.add(name, ad, source=f"{method} of {', '.join(names)}")
        return name

    def inspect(self) -> dict:
        """Parameter counts and MB (10^6 bytes) of the base model and of each adapter."""
        mem = self.bank.memory()
        adapters = {}
        for name, ad in self.bank.adapters.items():
            m = mem["adapters"][name]
            adapters[name] = {"params": m["params"], "mb": _mb(m["bytes"]), "rank": ad.rank, "alpha": ad.alpha,
                              "dora": ad.dora, "modules": len(ad.modules()), "source": self.bank.sources[name]}
        return {"base": {"model": self.base, "params": mem["base"]["params"], "mb": _mb(mem["base"]["bytes"]), "dtype": self.dtype},
                "adapters": adapters, "active": self.active}


def base_of(adapter) -> str | None:
    """The base model an adapter (a dir or an Adapter) records: a folder that exists here, else
    its Hub id; None when it records none."""
    from smolmac.adapters import Adapter, read_adapter

    ad = adapter if isinstance(adapter, Adapter) else read_adapter(adapter)
    for spec in (ad.base_path, ad.base):
        if spec and Path(str(spec)).expanduser().is_dir():
            return str(spec)
    return ad.base if ad.base and not Path(ad.base).expanduser().is_absolute() else None


def load(base: str | None = None, adapters=None, dtype: str = "auto") -> LoadedModel:
    """Load a base model once and attach adapters by name.

    Args:
        base: Hub id or model directory; None takes the base recorded by the first adapter.
        adapters: {name: dir} or a list of "NAME=DIR" / "DIR" strings (run dirs, mlx-lm or
            PEFT adapter dirs; adapters of other targets, ranks, layers and DoRA coexist).
        dtype: "auto" (bfloat16 on Metal/CUDA, float32 on the CPU backend), "float32",
            "float16" or "bfloat16".
    """
    from smolmac.adapters import parse_adapter_specs, read_adapter
    from smolmac.models import load_model, resolve_dtype

    dtype = resolve_dtype(dtype)
    if isinstance(adapters, (str, Path)):
        adapters = [adapters]
    specs = dict(adapters) if isinstance(adapters, dict) else parse_adapter_specs(adapters or [])
    read = {name: read_adapter(path) for name, path in specs.items()}
    if not base:
        base = next((base_of(ad) for ad in read.values()), None)
        if not base:
            raise UserError("load: give the base model (a Hub id or a folder); the adapters do not record one that is available here.")
    model, tok, _config, _path = load_model(str(base), dtype)
    handle = LoadedModel(model, tok, str(base), dtype)
    for name, ad in read.items():
        handle.bank.add(name, ad, source=str(specs[name]))
    return handle
