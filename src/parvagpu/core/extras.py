"""How to install an optional extra, said the same way everywhere (printed escaped: Rich would
otherwise take `[serve]` for markup)."""


def install_hint(extra: str) -> str:
    return f"pip install 'parvagpu[{extra}]' (in a source checkout: pip install -e '.[{extra}]')"
