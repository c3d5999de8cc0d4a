"""User-facing errors: one sentence, exit code 2, no traceback."""


class UserError(Exception):
    """A failure the user can fix (bad file, key, value, missing model...).

    The message is one sentence naming the file/line/key and what to do; the CLI prints it and
    exits with code 2.
    """

    exit_code = 2


def did_you_mean(word: str, choices) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
