"""The one error type a user can cause; the CLI prints it without a traceback."""


class UserError(ValueError):
    """Bad input from the user: the message names the bad value and what would be valid."""


def read_json(path, what: str, default=None, kind: type = dict):
    """A JSON file a user's folder holds, or one UserError naming it; `default` when it is absent."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        if default is not None:
            return default
        raise UserError(f"{what} {str(path)!r} not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {str(path)!r} is not readable JSON ({type(err).__name__}); rewrite or remove it") from None
    if not isinstance(data, kind):
        raise UserError(f"{what} {str(path)!r} holds a JSON {type(data).__name__}, not a {kind.__name__}")
    return data
