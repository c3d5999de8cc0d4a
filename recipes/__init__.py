"""The recipes shipped with smolmac: installed as the package data `smolmac.recipes`, so that
`smolmac train quickstart` finds them from any folder (`smolmac recipes` lists them)."""
