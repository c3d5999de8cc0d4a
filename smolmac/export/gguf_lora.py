"""--format gguf-lora: the adapter alone as llama.cpp's GGUF LoRA adapter, as llama.cpp's
convert_lora_to_gguf.py writes it: `general.type = adapter`, `adapter.type = lora`,
`adapter.lora.alpha`, and for each adapted linear `<gguf name>.lora_a` (PEFT lora_A, (r, in)) and
`<gguf name>.lora_b` (PEFT lora_B, (out, r), its rows in llama.cpp's rotary order for Q/K).
A base already in GGUF gets the fine-tune in a few MB:

    smolmac export runs/x --format gguf-lora --to out/x-lora.gguf
    llama-cli -m base.gguf --lora out/x-lora.gguf          # Ollama: ADAPTER ./x-lora.gguf

llama.cpp scales the update by alpha / rank; smolmac writes alpha = scale * rank so that rsLoRA
(scale alpha / sqrt(rank)) keeps its strength. DoRA has no GGUF form and is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from smolmac.errors import UserError


def _base_config(src, ad) -> dict:
    from smolmac.models import resolve_model_path

    for spec in (ad.base_path, ad.base, src.base):
        if spec and Path(str(spec)).expanduser().is_dir() and (Path(str(spec)).expanduser() / "config.json").is_file():
            return json.loads((Path(str(spec)).expanduser() / "config.json").read_text())
    spec = next((s for s in (ad.base, src.base) if s), None)
    if spec is None:
        raise UserError(f"--format gguf-lora: {src.path} does not record its base model; llama.cpp needs the base's architecture to name the tensors, so export from the run directory.")
    return json.loads((resolve_model_path(str(spec)) / "config.json").read_text())


def write(src, out: Path, dtype: str | None, say) -> Path:
    import gguf

    from smolmac.export.card import card_info
    from smolmac.export.gguf_file import add_general, architecture, encode, permute

    ad = src.adapter
    if ad.dora:
        raise UserError("--format gguf-lora: llama.cpp's LoRA adapters have no DoRA magnitude vector; export --format gguf (the DoRA fused into the model) instead.")
    config = _base_config(src, ad)
    where = f"--format gguf-lora ({config.get('model_type')})"
    arch, permute_qk = architecture(config, where)
    arch_id = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    names = gguf.get_tensor_name_map(arch_id, config["num_hidden_layers"])
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    qtype = dtype or "f32"
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    info = card_info(src, "gguf-lora", qtype)
    add_general(writer, info)
    # llama.cpp: y = W x + (alpha / rank) * B A x
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(ad.scale * ad.rank))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    weights = ad.weights_as("float32")
    for module in ad.modules():
        name = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if name is None:
            raise UserError(f"{where}: the adapted module '{module}' has no GGUF tensor name for {arch}.")
        a = np.asarray(weights[f"{module}.lora_a"]).T  # (r, in), PEFT's lora_A
        b = np.asarray(weights[f"{module}.lora_b"]).T  # (out, r), PEFT's lora_B
        if permute_qk and module.endswith("q_proj"):
            b = permute(b, heads)
        elif permute_qk and module.endswith("k_proj"):
            b = permute(b, kv)
        for suffix, data in ((".lora_a", a), (".lora_b", b)):
            encoded, kind = encode(np.ascontiguousarray(data), name + suffix, qtype)
            writer.add_tensor(name + suffix, encoded, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    say(f"GGUF LoRA: {len(ad.modules())} adapted linears of a {arch} model, rank {ad.rank}, alpha {ad.scale * ad.rank:g}, {qtype}.")
    return out


def usage(info: dict, ref: str, base: str, local: str, fetch: str) -> str:
    return f"""### llama.cpp

```bash
{fetch}llama-cli -m base.gguf --lora {local} -cnv   # base.gguf: {base} as GGUF
```

### Ollama

```
FROM ./base.gguf
ADAPTER ./{Path(local).name}
```
"""
