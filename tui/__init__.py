"""The smolmac Textual app (installed as `smolmac.tui`)."""
